import json

from typer.testing import CliRunner

from conformood.cli import app


def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--epochs", "2", "--classes", "0,7", "--no-progress", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_class"]) == ["0", "7"]
    keys = {"auroc", "aupr_in", "aupr_out", "fpr95", "detection_accuracy", "test_fpr_at_alpha"}
    for method in ("firm", "raw_pixels"):
        assert keys <= set(metrics["mean"][method])
        for c in ("0", "7"):
            r = metrics["per_class"][c][method]
            assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["test_fpr_at_alpha"] <= 1.0
        mean_auroc = (metrics["per_class"]["0"][method]["auroc"] + metrics["per_class"]["7"][method]["auroc"]) / 2
        assert abs(metrics["mean"][method]["auroc"] - mean_auroc) < 1e-12
    for name in ("report.md", "roc.png", "histograms_firm.png", "histograms_raw_pixels.png", "training_loss.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert "| firm |" in (out / "report.md").read_text()


def test_demo_rejects_bad_alpha(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--alpha", "1.5", "--no-progress"])
    assert result.exit_code != 0
    assert "alpha" in result.output
