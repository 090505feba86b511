"""Every YAML recipe in configs/ trains for one epoch on a tiny slice of digits through the CLI (smoke)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conformood.cli import app
from conformood.train.recipes import load_train_config, load_trained_model

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
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
    assert result.exit_code != 0 and "no config file" in result.output


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
    from conformood.train.recipes import TrainRunConfig

    with pytest.raises(ValueError, match="normal_class"):
        TrainRunConfig(eval_every=1)
