import json

from typer.testing import CliRunner

from conformood.cli import app


def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--data", "digits", "--out", str(out), "--epochs", "2", "--classes", "0,7", "--no-progress",
              "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_class"]) == ["0", "7"]
    keys = {"auroc", "aupr_in", "aupr_out", "fpr95", "detection_accuracy", "realised_fpr_at_alpha"}
    for method in ("firm", "raw_pixels"):
        assert keys <= set(metrics["mean"][method])
        for c in ("0", "7"):
            r = metrics["per_class"][c][method]
            assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["realised_fpr_at_alpha"] <= 1.0
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
    assert first["world_size"] == 1 and len(first["history"]["loss"]) == 2 and first["epochs_trained_now"] == 2
    from conformood.data import load_digits_dataset, train_calibration_test_split

    digits = load_digits_dataset()
    split = train_calibration_test_split(digits.labels, seed=0)
    assert first["n_train"] == int((digits.labels[split.train] == 4).sum())  # the class-4 training images
    # resuming a finished run trains nothing more (a retrain from scratch would give the same history) and
    # keeps the history
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "train.json").read_text())
    assert again["epochs_trained_now"] == 0 and again["history"] == first["history"]


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


def _write_feature_files(tmp_path, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(3, 6)) * 3

    def part(n, n_ood=0):
        y = rng.integers(0, 3, n + n_ood)
        x = means[y[:n]] + rng.normal(size=(n, 6))
        x = np.r_[x, rng.normal(size=(n_ood, 6)) * 3]
        logits = x @ means.T
        return x.astype(np.float32), y, logits

    x, y, lg = part(150)
    np.savez(tmp_path / "train.npz", features=x, labels=y, logits=lg)
    x, y, lg = part(100)
    np.savez(tmp_path / "cal.npz", features=x, labels=y, logits=lg)
    x, y, lg = part(100, 50)
    np.savez(
        tmp_path / "test.npz", features=x, labels=y, logits=lg, is_inlier=np.r_[np.ones(100, bool), np.zeros(50, bool)]
    )


def test_evaluate_and_score_end_to_end(tmp_path):
    import numpy as np
    from sklearn.metrics import roc_auc_score

    _write_feature_files(tmp_path)
    out = tmp_path / "ev"
    args = ["evaluate", "--train", str(tmp_path / "train.npz"), "--calibration", str(tmp_path / "cal.npz"),
            "--test", str(tmp_path / "test.npz"), "--detector", "knn_cosine", "--option", "n_neighbors=3",
            "--alpha", "0.1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    r = json.loads((out / "evaluation.json").read_text())
    for key in ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_accuracy", "realised_fpr_at_alpha",
                "bh_discoveries", "bh_fdp", "bh_power"):
        assert key in r
    with np.load(out / "test_scores.npz") as z:
        assert r["auroc"] == roc_auc_score(z["is_inlier"], z["scores"])
        assert r["realised_fpr_at_alpha"] == float((z["p_values"][z["is_inlier"]] <= 0.1).mean())
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "http://" not in html and "https://" not in html and "src='http" not in html  # no external URL at all
    assert "`" not in html.split("<body>")[1]  # Markdown code spans are rendered, not shown literally
    assert "<code>n_neighbors=3</code>" in html and "options {}" not in html  # the parameters actually used
    assert "<figcaption>roc.png" not in html and "<figcaption>ROC curve" in html  # captions say what is shown
    assert r["detector_params"]["n_neighbors"] == 3 and r["detector_params"]["backend"] == "auto"
    for name in ("evaluation.md", "roc.png", "score_histogram.png", "guarantee.png"):
        assert (out / name).is_file()
    result = CliRunner().invoke(app, ["score", "--detector-file", str(out / "detector.safetensors"),
                                      "--inputs", str(tmp_path / "test.npz"), "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "s.json").read_text())
    with np.load(out / "test_scores.npz") as z:
        np.testing.assert_allclose(s["p_value"], z["p_values"])
    assert (tmp_path / "s.csv").read_text().startswith("index,score,p_value,flagged,bh_selected")


def test_evaluate_logit_detector_mondrian_and_errors(tmp_path):
    _write_feature_files(tmp_path)
    base = ["evaluate", "--train", str(tmp_path / "train.npz"), "--calibration", str(tmp_path / "cal.npz"),
            "--test", str(tmp_path / "test.npz"), "--out", str(tmp_path / "ev")]
    result = CliRunner().invoke(app, [*base, "--detector", "energy", "--mondrian"])
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert r["mondrian"] and r["detector"] == "energy"
    result = CliRunner().invoke(app, [*base, "--detector", "nope"])
    assert result.exit_code != 0 and "unknown detector" in result.output
    result = CliRunner().invoke(app, [*base, "--alpha", "2"])
    assert result.exit_code != 0 and "alpha" in result.output


def test_evaluate_from_a_trained_checkpoint(tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--out", str(run), "--epochs", "1", "--normal-class", "5",
                                      "--image-size", "8", "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "ev"
    # the data set and protocol default to what the model was trained on (digits, class 5), and the result
    # records the model and what it covers
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(run / "model.safetensors"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "one-vs-rest:5 on digits" in result.output
    r = json.loads((out / "evaluation.json").read_text())
    trained = json.loads((run / "train.json").read_text())
    assert r["n_train"] == trained["n_train"]  # the same class-5 training images the encoder saw
    assert 0.5 < r["auroc"] <= 1.0
    model = r["feature_source"]
    assert model["kind"] == "model" and model["data"] == "digits" and model["protocol"] == "one-vs-rest:5"
    assert model["trained_on"]["normal_class"] == "5" and model["model_sha256"].startswith("sha256:")
    # contradictory options are refused: feature files beside --checkpoint, another class than the model's
    for extra in (["--train", str(out / "features_train.npz")], ["--protocol", "one-vs-rest:3"]):
        result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(run / "model.safetensors"),
                                          "--out", str(tmp_path / "ev2"), *extra])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    result = CliRunner().invoke(app, ["evaluate", "--train", "a.npz", "--calibration", "b.npz", "--test", "c.npz",
                                      "--protocol", "one-vs-rest:5"])
    assert result.exit_code == 2 and "--checkpoint" in result.output
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(run / "model.safetensors"),
                                      "--protocol", "sideways:1", "--out", str(out)])
    assert result.exit_code != 0 and "protocol" in result.output


def test_evaluate_named_pair_from_checkpoint(tmp_path):
    import pytest

    from conformood.data.idx import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--out", str(run), "--epochs", "1", "--image-size", "8",
                                      "--objective", "ntxent", "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "ev"
    result = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(run / "model.safetensors"),
                                      "--protocol", "pair:digits-vs-fashion-mnist", "--out", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads((out / "evaluation.json").read_text())
    assert r["n_test_ood"] == r["n_test_inliers"] and r["auroc"] > 0.5
