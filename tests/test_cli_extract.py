"""``conformood extract`` writes the features ``conformood evaluate`` reads; its bad inputs are one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conformood.cli import main


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_extract_then_evaluate(tmp_path, capsys):
    base = ["extract", "--data", "digits", "--weights", "none", "--input-size", "32", "--device", "cpu"]
    for name, extra in (("train", ["--class", "0", "--take", "0:120"]), ("cal", ["--class", "0", "--take", "120:"]),
                        ("test", ["--take", "0:500", "--inlier-class", "0"])):
        code, out, err = _run([*base, *extra, "--out", str(tmp_path / f"{name}.npz")], capsys)
        assert code == 0, err
    train, test = np.load(tmp_path / "train.npz"), np.load(tmp_path / "test.npz")
    assert train["features"].shape == (120, 1280) and set(train["labels"].tolist()) == {0}
    assert test["is_inlier"].sum() == (test["labels"] == 0).sum() > 0
    record = json.loads(str(train["provenance"]))
    assert record["config"]["backbone"] == "mobilenet_v2" and record["config"]["feature_source"]["input_size"] == [32, 32]
    assert json.loads(str(train["feature_source"]))["input_size"] == [32, 32]
    code, out, err = _run(["evaluate", "--train", str(tmp_path / "train.npz"), "--calibration",
                           str(tmp_path / "cal.npz"), "--test", str(tmp_path / "test.npz"), "--out",
                           str(tmp_path / "ev")], capsys)
    assert code == 0, err
    assert 0.0 <= json.loads((tmp_path / "ev" / "evaluation.json").read_text())["auroc"] <= 1.0


@pytest.mark.parametrize("extra, needle", [
    (["--take", "5"], "START:STOP"),
    (["--split", "train"], "named data set"),
    (["--class", "42"], "'42'"),
    (["--backbone", "resnet9000"], "resnet9000"),
    (["--weights", "missing.safetensors"], "missing.safetensors"),
    (["--take", "10:10"], "no images"),
])
def test_bad_inputs_are_one_line(tmp_path, capsys, extra, needle):
    code, out, err = _run(["extract", "--data", "digits", "--weights", "none", "--input-size", "32", "--device",
                           "cpu", "--out", str(tmp_path / "f.npz"), *extra], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_evaluate_straight_from_images_with_a_backbone(tmp_path, capsys):
    out = tmp_path / "ev"
    code, stdout, err = _run(["evaluate", "--backbone", "mobilenet_v2", "--weights", "none", "--input-size", "32",
                              "--data", "digits", "--protocol", "one-vs-rest:3", "--out", str(out)], capsys)
    assert code == 0, err
    assert "one-vs-rest:3 on digits" in stdout
    r = json.loads((out / "evaluation.json").read_text())
    assert r["feature_source"]["backbone"] == "mobilenet_v2" and r["feature_source"]["weights"] is None
    assert np.load(out / "features_train.npz")["features"].shape[1] == 1280
    assert "frozen backbone" in (out / "evaluation.md").read_text()
    for extra, needle in ((["--protocol", "one-vs-rest:3"], "--data"),
                          (["--data", "digits", "--protocol", "one-vs-rest:3", "--train", "x.npz"], "--train"),
                          (["--data", "digits", "--protocol", "one-vs-rest:3", "--backbone", "nope"], "nope")):
        code, _, err = _run(["evaluate", "--backbone", "mobilenet_v2", *extra, "--out", str(tmp_path / "e2")], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_score_new_images_through_a_trained_model_or_a_backbone(tmp_path, capsys):
    from conformood.conformal import ConformalDetector
    from conformood.data import load_named
    from conformood.data.arrays import resize_images
    from conformood.train.recipes import load_trained_model

    run, ev = tmp_path / "run", tmp_path / "ev"
    for args in (["train", "--out", str(run), "--epochs", "1", "--normal-class", "2", "--image-size", "8",
                  "--no-progress", "--device", "cpu"],
                 ["evaluate", "--checkpoint", str(run / "model.safetensors"), "--out", str(ev)]):
        code, _, err = _run(args, capsys)
        assert code == 0, err
    digits = load_named("digits")
    np.savez(tmp_path / "new.npz", images=digits.images[:30], labels=digits.labels[:30])
    code, stdout, err = _run(["score", "--detector-file", str(ev / "detector.safetensors"), "--images",
                              str(tmp_path / "new.npz"), "--model", str(run / "model.safetensors"), "--out",
                              str(tmp_path / "s.json")], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "s.json").read_text())
    model, _ = load_trained_model(run / "model.safetensors")
    feats = model.features(resize_images(digits.subset(np.arange(30)).tensor(), (8, 8))).numpy()
    cd = ConformalDetector.load(ev / "detector.safetensors")
    assert np.allclose(r["p_value"], cd.p_values(feats)) and r["n"] == 30  # the same as features + score
    assert r["config"]["model"] == str(run / "model.safetensors")
    for extra, needle in ((["--images", str(tmp_path / "new.npz")], "--model"),
                          (["--images", str(tmp_path / "new.npz"), "--inputs", "x.npz"], "one of"),
                          (["--images", str(tmp_path / "new.npz"), "--backbone", "mobilenet_v2", "--weights", "none",
                            "--input-size", "32"], "features")):
        code, _, err = _run(["score", "--detector-file", str(ev / "detector.safetensors"), *extra, "--out",
                             str(tmp_path / "t.json"), "--overwrite"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
