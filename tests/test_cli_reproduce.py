"""`conformood reproduce coat` and `conformood reproduce ccs-sim` end to end on tiny settings."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from conformood.cli import app
from conformood.data.segmentation import synthetic_segmentation

runner = CliRunner()


def test_reproduce_coat_on_npz(tmp_path):
    data, _ = synthetic_segmentation(48, 16, 16, seed=0)
    masks = data.masks.copy()
    masks[:3] = False  # three empty masks: counted and dropped, not silently kept
    np.savez(tmp_path / "seg.npz", x=data.images, y=masks.astype(np.uint8))
    out = tmp_path / "out"
    args = ["reproduce", "coat", "--data", str(tmp_path / "seg.npz"), "--alpha", "0.2", "--splits", "2",
            "--out", str(out), "--unet-epochs", "2", "--at-epochs", "2", "--coat-epochs", "2", "--no-progress",
            "--predictor", "small"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "coat.json").read_text())
    assert set(payload["results"]["0.2"]) == {"CRC", "AT", "COAT"}
    for method in ("CRC", "AT", "COAT"):
        r = payload["results"]["0.2"][method]
        assert 0.0 <= r["marginal_coverage"]["mean"] <= 1.0
        assert len(r["per_split_coverage_gap"]) == 2
    # the three empty masks fall in the held-out part or in the base model's training part; those held out
    # are counted as dropped, never silently kept
    from conformood.experiments.coat import CoatConfig

    order = np.random.default_rng(0).permutation(48)  # the split of the experiment (seed 0)
    held_out = order[int(round(CoatConfig().train_fraction * 48)) :]
    held_out_empty = int(np.isin(held_out, [0, 1, 2]).sum())
    assert payload["data"]["held_out_empty_masks_dropped"] == held_out_empty
    assert (
        payload["data"]["held_out_used"] + payload["data"]["held_out_empty_masks_dropped"]
        == payload["data"]["held_out_images"]
    )
    for name in ("coat.md", "coverage_gap_boxplot.png", "coat_training_loss.png", "overlays_alpha0.2.png"):
        assert (out / name).exists(), name
    # A second run into the same folder is refused without --overwrite, and with it reuses the cached base
    # model and probability maps.
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "coat.json").read_text())["base_model"]["loaded"] is True


def test_reproduce_coat_rejects_an_unknown_predictor(tmp_path):
    result = runner.invoke(app, ["reproduce", "coat", "--predictor", "resnet", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "predictor" in result.output


def test_reproduce_coat_rejects_bad_alpha(tmp_path):
    result = runner.invoke(app, ["reproduce", "coat", "--alpha", "1.5", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "alpha" in result.output


def test_reproduce_ccs_sim_small(tmp_path):
    out = tmp_path / "ccs"
    result = runner.invoke(
        app,
        ["reproduce", "ccs-sim", "--seeds", "2", "--out", str(out), "--workers", "1", "--epochs", "2", "--k", "20",
         "--n-per-class", "300", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "ccs_sim.json").read_text())
    assert len(payload["methods"]) == 8
    for label, r in payload["methods"].items():
        assert set(r) >= {"coverage", "exclusion", "log_volume"}
        assert 0.85 < r["coverage"]["mean"] < 1.0, label
        assert len(r["per_seed"]) == 2
    assert "Single (Neg, Vol)" in (out / "ccs_sim.md").read_text()


def test_reproduce_coat_accepts_space_separated_alphas(tmp_path, monkeypatch):
    import conformood.experiments.coat as coat

    seen = {}

    def fake_run(config, out, progress=True):
        seen["alphas"] = config.alphas
        (tmp_path / "coat.md").write_text("x")
        return {"wall_time_s": 0.0}

    monkeypatch.setattr(coat, "run_coat", fake_run)
    result = runner.invoke(app, ["reproduce", "coat", "--alpha", "0.1", "0.2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen["alphas"] == (0.1, 0.2)
