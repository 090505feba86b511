"""The deployment surfaces fail safe: a failed --overwrite keeps the earlier run, every error names its file,
batch or parameter, PAC decisions say so in every output, warnings reach the user once, and bad weights files
are one line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conformood.cli import main
from conformood.conformal import ConformalDetector
from conformood.scores import get_detector

RNG = np.random.default_rng(0)


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def detector_file(tmp_path):
    train, cal = RNG.normal(size=(200, 5)), RNG.normal(size=(60, 5))
    cd = ConformalDetector(get_detector("knn_cosine").fit(train)).calibrate(cal, delta=0.1)
    cd.save(tmp_path / "d.safetensors")
    np.savez(tmp_path / "good.npz", features=RNG.normal(size=(30, 5)))
    bad = RNG.normal(size=(30, 5))
    bad[3, 1] = np.nan
    np.savez(tmp_path / "bad.npz", features=bad)
    return tmp_path / "d.safetensors"


def test_a_failed_overwrite_keeps_the_earlier_monitor_run(detector_file, tmp_path, capsys):
    out = tmp_path / "watch"
    code, _, err = _run(["monitor", "--detector-file", str(detector_file), "--inputs", str(tmp_path / "good.npz"),
                         "--out", str(out)], capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"monitor.json", "monitor.png"}
    code, _, err = _run(["monitor", "--detector-file", str(detector_file), "--inputs", str(tmp_path / "good.npz"),
                         str(tmp_path / "bad.npz"), "--out", str(out), "--overwrite"], capsys)
    assert code == 2 and "bad.npz" in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]  # nothing left behind
    code, _, err = _run(["monitor", "--detector-file", str(detector_file), "--inputs", str(tmp_path / "good.npz"),
                         str(tmp_path / "good.npz"), "--out", str(out), "--overwrite"], capsys)
    assert code == 0 and json.loads((out / "monitor.json").read_text())["n"] == 60


def test_a_failed_overwrite_keeps_the_earlier_evaluation(tmp_path, capsys):
    np.savez(tmp_path / "tr.npz", features=RNG.normal(size=(100, 4)))
    np.savez(tmp_path / "cal.npz", features=RNG.normal(size=(50, 4)))
    np.savez(tmp_path / "wide.npz", features=RNG.normal(size=(50, 5)))
    out = tmp_path / "ev"
    code, _, err = _run(["evaluate", "--train", str(tmp_path / "tr.npz"), "--calibration", str(tmp_path / "cal.npz"),
                         "--out", str(out)], capsys)
    assert code == 0, err
    before = (out / "detector.safetensors").read_bytes()
    code, _, err = _run(["evaluate", "--train", str(tmp_path / "tr.npz"), "--calibration", str(tmp_path / "wide.npz"),
                         "--out", str(out), "--overwrite"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (out / "detector.safetensors").read_bytes() == before


def test_pac_decisions_say_so_in_every_output(detector_file, tmp_path, capsys):
    code, out, err = _run(["score", "--detector-file", str(detector_file), "--inputs", str(tmp_path / "good.npz"),
                           "--alpha", "0.2", "--out", str(tmp_path / "s.json")], capsys)
    assert code == 0, err
    assert "PAC" in out and "δ=0.1" in out
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["delta"] == 0.1 and r["rule"]["kind"] == "pac"
    group = r["rule"]["groups"]["-1"]
    cd = ConformalDetector.load(detector_file)
    assert group["rank"] == cd.flag_rank(0.2, 60) and group["p_limit"] == group["rank"] / 61 < 0.2
    header, first = (tmp_path / "s.csv").read_text().splitlines()[:2]
    assert header.endswith(",rule") and "PAC rank" in first
    flagged = np.array(r["flagged"])
    assert (flagged == (np.array(r["p_value"]) <= group["p_limit"])).all()  # why p <= alpha may stay unflagged


def test_a_library_warning_reaches_the_user_once_as_one_line(tmp_path, capsys):
    np.savez(tmp_path / "tr.npz", features=RNG.normal(size=(100, 4)))
    np.savez(tmp_path / "cal.npz", features=RNG.normal(size=(20, 4)))
    test = RNG.normal(size=(40, 4))
    np.savez(tmp_path / "te.npz", features=test, is_inlier=np.arange(40) < 20)
    code, _, err = _run(["evaluate", "--train", str(tmp_path / "tr.npz"), "--calibration", str(tmp_path / "cal.npz"),
                         "--test", str(tmp_path / "te.npz"), "--delta", "0.05", "--alpha", "0.05", "--out",
                         str(tmp_path / "ev")], capsys)
    assert code == 0, err
    warnings_ = [line for line in err.splitlines() if line.startswith("Warning:")]
    assert len(warnings_) == 1 and "at least" in warnings_[0], err
    assert "warnings.warn" not in err and ".py:" not in err


@pytest.mark.parametrize("seed", [-1, 1.5, "abc"])
def test_monitor_parameters_are_named(seed):
    from conformood.monitor import ConformalMonitor, log_mixture_martingale, online_p_values

    cd = ConformalDetector(get_detector("center").fit(RNG.normal(size=(50, 3)))).calibrate(RNG.normal(size=(20, 3)))
    with pytest.raises(ValueError, match="seed"):
        ConformalMonitor(cd, seed=seed)
    for chunk in (-1, 0, 1.5):
        with pytest.raises(ValueError, match="chunk"):
            online_p_values(np.arange(5.0), np.arange(3.0), chunk=chunk)
    with pytest.raises(ValueError, match="grid"):
        log_mixture_martingale(np.array([0.5]), grid=0)


def test_bad_weights_files_are_one_line(tmp_path, capsys):
    from conformood.models.mobilenet import MobileNetV2

    (tmp_path / "zero.pth").write_bytes(b"")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unpickled",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps(Payload()))
    state = MobileNetV2().state_dict()
    state["features.0.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    for name, needle in (("zero.pth", "empty"), ("evil.pth", "weights_only"), ("nan.pth", "features.0.0.weight")):
        code, out, err = _run(["extract", "--data", "digits", "--weights", str(tmp_path / name), "--input-size", "32",
                               "--take", "0:4", "--out", str(tmp_path / "f.npz"), "--no-progress"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, (name, err)
        assert "unpickled" not in out


def test_an_empty_allocator_variable_is_as_if_unset():
    env = {**os.environ, "CONFORMOOD_KEEP_FREED_MEMORY": ""}
    done = subprocess.run([sys.executable, "-m", "conformood", "--help"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_images_of_any_bit_depth_palette_or_alpha_read_correctly(tmp_path):
    from PIL import Image

    from conformood.data import load_image_folder

    (tmp_path / "c").mkdir()
    ramp16 = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "c" / "a16.png")
    ramp8 = np.rint(ramp16 / 257).astype(np.uint8)
    Image.fromarray(ramp8).convert("P").save(tmp_path / "c" / "b_palette.png")
    rgba = np.dstack([ramp8, ramp8, ramp8, np.zeros_like(ramp8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c" / "c_alpha.png")
    Image.fromarray(ramp16).save(tmp_path / "c" / "d16.tif")
    data = load_image_folder(tmp_path, mode="L")
    assert len(data.images) == 4
    for image in data.images:  # all the same ramp, the 16-bit ones scaled (not 100 % white)
        np.testing.assert_allclose(image[0].astype(int), ramp8.astype(int), atol=1)


def test_mixed_sizes_are_resized_as_the_backbone_would(tmp_path, capsys):
    from PIL import Image

    from conformood.models import extract_features, get_backbone

    folder = tmp_path / "mixed" / "parts"
    folder.mkdir(parents=True)
    images = [RNG.integers(0, 256, size=s, dtype=np.uint8) for s in ((40, 60), (32, 32), (20, 50))]
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    code, _, err = _run(["extract", "--data", str(tmp_path / "mixed"), "--weights", "none", "--input-size", "32",
                         "--out", str(tmp_path / "f.npz"), "--no-progress"], capsys)
    assert code == 0, err
    features = np.load(tmp_path / "f.npz")["features"]
    backbone = get_backbone("mobilenet_v2", weights=None, input_size=32)
    for image, row in zip(images, features):  # each image alone, through the backbone's own preprocessing
        alone = extract_features(backbone, image[None, None], progress=False)[0]
        np.testing.assert_allclose(row, alone, rtol=1e-5, atol=1e-6)
    from conformood.data import load_image_folder

    with pytest.raises(ValueError, match="--input-size"):
        load_image_folder(tmp_path / "mixed")


def test_skip_bad_lists_unreadable_images_and_never_drops_them_silently(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "in" / "parts"
    folder.mkdir(parents=True)
    for i in range(12):
        Image.fromarray(RNG.integers(0, 256, size=(16, 16), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    (folder / "bad.png").write_bytes(b"text, not a png")
    (folder / "empty.png").write_bytes(b"")
    base = ["--weights", "none", "--input-size", "32", "--no-progress"]
    code, _, err = _run(["extract", "--data", str(tmp_path / "in"), *base, "--out", str(tmp_path / "f.npz")], capsys)
    assert code == 2 and "parts/bad.png" in err and "--skip-bad" in err, err
    code, _, err = _run(["extract", "--data", str(tmp_path / "in"), *base, "--skip-bad", "--out",
                         str(tmp_path / "f.npz")], capsys)
    assert code == 0 and "2 unreadable" in err, err
    f = np.load(tmp_path / "f.npz")
    assert len(f["features"]) == 12 and sorted(s.split(":")[0] for s in f["skipped"]) == ["parts/bad.png",
                                                                                        "parts/empty.png"]
    cd = ConformalDetector(get_detector("knn_cosine").fit(f["features"][:8]), alpha=0.2)
    cd.feature_source = json.loads(str(f["feature_source"]))
    cd.calibrate(f["features"][8:]).save(tmp_path / "d.safetensors")
    code, _, err = _run(["score", "--detector-file", str(tmp_path / "d.safetensors"), "--images",
                         str(tmp_path / "in"), "--skip-bad", "--out", str(tmp_path / "s.json")], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["n"] == 12 and r["n_skipped"] == 2
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 1 + 14 and rows[-1].startswith("parts/empty.png,,,,,") and "skipped" in rows[-1]


def test_a_damaged_or_older_decoding_cache_is_read_past(tmp_path):
    import tarfile

    from PIL import Image

    from conformood.data import load_image_folder

    (tmp_path / "src" / "train" / "a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(RNG.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(tmp_path / "src" / "train" / "a" /
                                                                                f"{i}.png")
    with tarfile.open(tmp_path / "data.tar", "w") as tar:
        tar.add(tmp_path / "src" / "train", arcname="train")
    cache = tmp_path / "cache"
    first = load_image_folder(tmp_path / "data.tar", split="train", cache_dir=cache)
    (cached,) = list(cache.iterdir())
    np.savez(cached, images=first.images, labels=first.labels)  # an older cache without names or skipped
    again = load_image_folder(tmp_path / "data.tar", split="train", cache_dir=cache)
    assert again.names == first.names and np.array_equal(again.images, first.images)
    cached.write_bytes(b"damaged")
    assert load_image_folder(tmp_path / "data.tar", split="train", cache_dir=cache).names == first.names
