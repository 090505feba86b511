"""The standalone scorer (conformood.export, ``conformood export``): its p-values equal the library's to 1e-6 and
its flags are identical, in a process where importing conformood fails.

kNN similarities are float32 values on a coarse grid, so on real features test scores often equal calibration
scores exactly; both sides re-score the neighbours with the same row-wise float64 arithmetic, and the test
includes exact copies of calibration rows for them. The float64 detectors (Mahalanobis, Gaussian, …) use matrix
products whose last bits depend on the batch (BLAS kernels), so for them an exact copy of a calibration input
could move a p-value by 1/(n + 1); the test uses continuous inputs for those."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conformood.cli import main
from conformood.conformal import ConformalDetector
from conformood.export import build_scorer, export_scorer, load_scorer
from conformood.scores import get_detector

EXPORTABLE = ["knn_cosine", "knn_cosine_norm", "knn_sun", "mahalanobis", "gaussian", "center", "l2_norm", "msp",
              "energy", "maxlogit"]

STANDALONE = """
import sys
sys.modules["conformood"] = None  # importing conformood now fails
try:
    import conformood  # noqa: F401
    raise SystemExit("conformood was importable")
except ImportError:
    pass
import io, json, zipfile
import numpy as np, torch
out = {}
for name, program_path, inputs_path in json.loads(sys.argv[1]):
    files = {"conformood.json": ""}
    program = torch.export.load(program_path, extra_files=files).module()
    meta = json.loads(files["conformood.json"])
    x = torch.from_numpy(np.load(inputs_path))
    score, p, flag = program(x)
    out[name + ".score"], out[name + ".p"], out[name + ".flag"] = score.numpy(), p.numpy(), flag.numpy()
    out[name + ".alpha"] = np.array(meta["alpha"])
np.savez(sys.argv[2], **out)
"""


def _run_standalone(jobs, tmp_path):
    result_path = tmp_path / "standalone.npz"
    done = subprocess.run([sys.executable, "-c", STANDALONE, json.dumps(jobs), str(result_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(result_path)


def _data(rng, n, d=12):
    return (rng.normal(size=(n, d)) + np.linspace(0, 1, d)).astype(np.float32)


def test_every_exportable_detector_matches_the_library_without_conformood(tmp_path):
    rng = np.random.default_rng(0)
    train, cal, test = _data(rng, 400), _data(rng, 300), _data(rng, 500) * 1.4
    labels = rng.integers(0, 3, 400)
    jobs, expected = [], {}
    for name in EXPORTABLE:
        if name.startswith("knn"):  # float32 similarities tie with calibration scores on real data: exact copies
            test = np.concatenate([test[:500], cal[:40], train[:10] * 3.0])  # of calibration rows, s_con = 1
        else:
            test = test[:500]
        cd = ConformalDetector(get_detector(name).fit(train, labels)).calibrate(cal, delta=0.1 if name == "knn_sun"
                                                                               else None)
        path = tmp_path / f"{name}.pt2"
        meta = export_scorer(cd, 0.1, torch.from_numpy(test[:3]), path)
        assert meta["runtime"] == "torch.export" and meta["alpha"] == 0.1 and "provenance" in meta
        np.save(tmp_path / f"{name}.npy", test)
        jobs.append((name, str(path), str(tmp_path / f"{name}.npy")))
        expected[name] = (cd.p_values(test), cd.predict(test, 0.1))
    got = _run_standalone(jobs, tmp_path)
    for name, (p, flags) in expected.items():
        assert np.abs(got[name + ".p"] - p).max() <= 1e-6, name
        assert np.array_equal(got[name + ".flag"], flags), name
        assert 0 < flags.sum() < flags.size, name  # the comparison covers both decisions
        assert float(got[name + ".alpha"]) == 0.1


def test_the_command_exports_a_trained_encoder_with_its_detector(tmp_path, capsys):
    run, ev = tmp_path / "run", tmp_path / "ev"
    for args in (["train", "--out", str(run), "--epochs", "1", "--normal-class", "3", "--image-size", "8",
                  "--no-progress", "--device", "cpu"],
                 ["evaluate", "--checkpoint", str(run / "model.safetensors"), "--out", str(ev)]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 0
    scorer = tmp_path / "scorer.pt2"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", str(run / "model.safetensors"), "--detector-file", str(ev / "detector.safetensors"),
              "--alpha", "0.2", "--out", str(scorer)])
    assert exit_info.value.code == 0 and "images" in capsys.readouterr().out

    from conformood.train.recipes import load_trained_model

    model, _ = load_trained_model(run / "model.safetensors")
    cd = ConformalDetector.load(ev / "detector.safetensors")
    images = torch.rand(64, 1, 8, 8) * torch.linspace(0.2, 3.0, 64)[:, None, None, None]
    np.save(tmp_path / "images.npy", images.numpy())
    feats = model.features(images).numpy()
    got = _run_standalone([("cnn", str(scorer), str(tmp_path / "images.npy"))], tmp_path)
    assert np.abs(got["cnn.p"] - cd.p_values(feats)).max() <= 1e-6
    assert np.array_equal(got["cnn.flag"], cd.predict(feats, 0.2))
    _, meta = load_scorer(scorer)
    assert meta["input"]["kind"] == "images" and meta["input"]["shape"] == ["batch", 1, 8, 8]
    assert meta["provenance"]["inputs"]["model"]["sha256"]


def test_refusals(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = _data(rng, 50)
    vim_like = ConformalDetector(get_detector("kde").fit(x)).calibrate(x)
    with pytest.raises(ValueError, match="cannot be exported; exportable detectors"):
        build_scorer(vim_like, 0.1)
    with pytest.raises(ValueError, match="not calibrated"):
        build_scorer(ConformalDetector(get_detector("l2_norm")), 0.1)
    mondrian = ConformalDetector(get_detector("l2_norm").fit(x), mondrian=True).calibrate(x, np.arange(50) % 2)
    with pytest.raises(ValueError, match="Mondrian"):
        build_scorer(mondrian, 0.1)
    with pytest.raises(FileNotFoundError):
        load_scorer(tmp_path / "missing.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="not a scorer"):
        load_scorer(tmp_path / "junk.pt2")
    cd = ConformalDetector(get_detector("l2_norm").fit(x)).calibrate(x)
    cd.save(tmp_path / "cd.safetensors")
    for args, needle in ((["--alpha", "0"], "--alpha"), (["--out", str(tmp_path)], "--out"),
                         (["--model", str(tmp_path / "junk.pt2")], "junk.pt2")):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--detector-file", str(tmp_path / "cd.safetensors"), *args])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_torchscript_is_the_fallback_where_export_fails(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    x = _data(rng, 200)
    cd = ConformalDetector(get_detector("mahalanobis").fit(x, np.zeros(200, dtype=int))).calibrate(_data(rng, 100))

    def unsupported(*args, **kwargs):
        raise RuntimeError("an operator torch.export cannot express")

    monkeypatch.setattr(torch.export, "export", unsupported)
    meta = export_scorer(cd, 0.1, torch.from_numpy(x[:2]), tmp_path / "s.pt")
    assert meta["runtime"] == "torchscript" and "cannot express" in meta["export_error"]
    program, stored = load_scorer(tmp_path / "s.pt")
    test = _data(rng, 300) * 1.3
    _, p, flag = program(torch.from_numpy(test))
    assert stored["runtime"] == "torchscript"
    assert np.abs(p.numpy() - cd.p_values(test)).max() <= 1e-6 and np.array_equal(flag.numpy(), cd.predict(test, 0.1))
