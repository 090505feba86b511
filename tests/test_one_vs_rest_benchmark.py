"""The one-vs-rest benchmark machinery: runs shared by several processes are gathered, finished runs are not
trained again, and a changed configuration is refused rather than mixed in."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _one_vs_rest as ovr  # noqa: E402
from conformood.data import load_digits_dataset, resize_images  # noqa: E402


def _args(out: Path, classes, epochs=1) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ovr.add_common_arguments(parser, epochs=epochs, n_train=30, batch_size=16, crop_scale_min=0.6, weight_decay=5e-4,
                             out=out)
    args = parser.parse_args(["--classes", *map(str, classes), "--threads", "1"])
    return args


def _run(args):
    data = load_digits_dataset()
    images = resize_images(data.tensor(), (8, 8))
    test_idx = np.arange(0, len(data.labels), 5)

    def train_images(c, rng):
        pool = np.setdiff1d((data.labels == c).nonzero()[0], test_idx)
        return images[np.sort(rng.choice(pool, size=args.n_train, replace=False))]

    return ovr.run_benchmark(
        name="tiny", title="digits one-vs-rest", description="test", args=args, class_names=data.class_names,
        train_images=train_images, x_test=images[test_idx], test_labels=data.labels[test_idx],
        methods={"ntxent": {"objective": "ntxent", "widths": (4, 8, 8)}}, method_labels={"ntxent": "NT-Xent"},
    )


def test_runs_are_gathered_resumed_and_checked(tmp_path, monkeypatch):
    first = _run(_args(tmp_path, [0]))
    assert list(first["results"]) == ["0"] and first["mean"]["n_classes"] == 1
    second = _run(_args(tmp_path, [3]))  # another process's share of the classes
    assert list(second["results"]) == ["0", "3"]
    saved = json.loads((tmp_path / "tiny.json").read_text())
    r = saved["results"]["3"]
    assert 0.0 <= r["ntxent"]["auroc"] <= 1.0 and 0.0 <= r["raw_pixels"]["auroc"] <= 1.0
    assert saved["mean"]["ntxent"]["auroc"] == pytest.approx(
        np.mean([saved["results"][c]["ntxent"]["auroc"] for c in ("0", "3")]))
    assert (tmp_path / "tiny.md").read_text().count("| 0 |") == 1 and (tmp_path / "tiny_auroc.png").stat().st_size > 0

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ovr, "train_contrastive_encoder", no_training)
    again = _run(_args(tmp_path, [0, 3]))
    assert again["results"] == second["results"]
    with pytest.raises(SystemExit, match="another configuration"):
        _run(_args(tmp_path, [0], epochs=2))
