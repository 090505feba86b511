"""``run_coat`` resumes after an interruption, and extends to more splits, with the same results as an
uninterrupted run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conformood.experiments import coat
from conformood.experiments.coat import CoatConfig, run_coat


def _blobs(path, n=48, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    y = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        r, c = rng.integers(2, size - 6, 2)
        y[i, r : r + 4, c : c + 4] = 1
        x[i, r : r + 4, c : c + 4] += 150
    np.savez(path, x=x, y=y)
    return path


def _metrics(payload):
    return {a: {m: {k: v for k, v in r.items()} for m, r in by.items()} for a, by in payload["results"].items()}


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    data = _blobs(tmp_path / "blobs.npz")
    cfg = dict(data=str(data), splits=3, alphas=(0.2,), unet_epochs=1, unet_widths=(4, 8), at_epochs=1,
               coat_epochs=1, predictor="small")
    whole = run_coat(CoatConfig(**cfg), tmp_path / "whole", progress=False)

    real, calls = coat.train_threshold_predictor, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # split 2 (0-based), AT: splits 0 and 1 are finished
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(coat, "train_threshold_predictor", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_coat(CoatConfig(**cfg), tmp_path / "resumed", progress=False)
    saved = json.loads((tmp_path / "resumed" / "coat_splits.json").read_text())
    assert saved["done_splits"] == 2

    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(coat, "train_threshold_predictor", counting)
    resumed = run_coat(CoatConfig(**cfg), tmp_path / "resumed", progress=False)
    assert counted["n"] == 2  # only the last split's AT and COAT were trained again
    assert _metrics(resumed) == _metrics(whole)
    # the splits' wall time adds up over both runs, not only the resuming one's
    timed = resumed["split_wall_time_s"]
    assert (timed["splits_timed"], timed["splits_untimed"]) == (3, 0)
    assert timed["total"] == pytest.approx(sum(json.loads((tmp_path / "resumed" / "coat_splits.json")
                                                          .read_text())["split_seconds"]))
    # Other settings do not pick up a stale partial run.
    monkeypatch.setattr(coat, "train_threshold_predictor", interrupted)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        run_coat(CoatConfig(**cfg), tmp_path / "other", progress=False)
    counted["n"] = 0
    monkeypatch.setattr(coat, "train_threshold_predictor", counting)
    run_coat(CoatConfig(**(cfg | {"seed": 1})), tmp_path / "other", progress=False)
    assert counted["n"] == 6


def test_a_run_extends_to_more_splits_and_takes_the_first_of_fewer(tmp_path, monkeypatch):
    data = _blobs(tmp_path / "blobs.npz")
    cfg = dict(data=str(data), alphas=(0.2,), unet_epochs=1, unet_widths=(4, 8), at_epochs=1, coat_epochs=1,
               predictor="small")
    whole = run_coat(CoatConfig(**cfg, splits=3), tmp_path / "whole", progress=False)
    first = run_coat(CoatConfig(**cfg, splits=1), tmp_path / "first", progress=False)
    real, counted = coat.train_threshold_predictor, {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(coat, "train_threshold_predictor", counting)
    run = tmp_path / "grown"
    run_coat(CoatConfig(**cfg, splits=2), run, progress=False)
    assert counted["n"] == 4
    grown = run_coat(CoatConfig(**cfg, splits=3), run, progress=False)
    assert counted["n"] == 6 and _metrics(grown) == _metrics(whole)
    fewer = run_coat(CoatConfig(**cfg, splits=1), run, progress=False)
    assert counted["n"] == 6 and _metrics(fewer) == _metrics(first)
