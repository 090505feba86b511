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


def test_train_single_process_and_resume(tmp_path):
    args = ["train", "--out", str(tmp_path), "--epochs", "2", "--normal-class", "4", "--no-progress",
            "--device", "cpu", "--image-size", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "train.json").read_text())
    assert first["world_size"] == 1 and len(first["history"]["loss"]) == 2
    from conformood.data import load_digits_dataset, train_calibration_test_split

    digits = load_digits_dataset()
    split = train_calibration_test_split(digits.labels, seed=0)
    assert first["n_train"] == int((digits.labels[split.train] == 4).sum())  # the class-4 training images
    # resuming a finished run trains nothing more and keeps the history
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "train.json").read_text())["history"] == first["history"]


def test_train_under_torchrun_two_processes(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "conformood", "train", "--out", str(tmp_path), "--epochs", "2", "--normal-class", "4",
           "--no-progress", "--device", "cpu", "--image-size", "8", "--batch-size", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "train.json").read_text())
    assert report["world_size"] == 2 and len(report["history"]["loss"]) == 2
    assert proc.stdout.count("trained firm") == 1  # only rank 0 reports
    from conformood.io import load_state

    tensors, model_cfg = load_state(tmp_path / "model.safetensors", kind="ContrastiveModel")
    assert model_cfg["in_channels"] == 1 and any(k.startswith("encoder.") for k in tensors)


def test_detectors_command_lists_the_registry():
    from conformood.scores import list_detectors

    result = CliRunner().invoke(app, ["detectors"])
    assert result.exit_code == 0, result.output
    for name in list_detectors():
        assert name in result.output
