"""coat.md compares the methods split by split, as well as by their means."""

from __future__ import annotations

import numpy as np

from conformood.report.coat import render_coat_markdown


def _method(gaps: list[float]) -> dict:
    return {"marginal_coverage": {"mean": 0.9, "std": 0.01}, "coverage_gap": {"mean": float(np.mean(gaps)), "std": 0.0},
            "set_size": {"mean": 0.1}, "per_split_coverage_gap": gaps}


def test_paired_differences_over_the_same_splits():
    gaps = {"CRC": [0.12, 0.11, 0.13, 0.10], "AT": [0.10, 0.12, 0.11, 0.09], "COAT": [0.11, 0.10, 0.12, 0.08]}
    payload = {
        "config": {"splits": 4},
        "data": {"source": "x", "base_train_images": 1, "held_out_used": 1, "held_out_empty_masks_dropped": 0,
                 "split_sizes": {"evaluation": 1, "threshold_training": 1, "calibration": 1}},
        "results": {"0.1": {m: _method(g) for m, g in gaps.items()}},
        "paper": "",
    }
    text = render_coat_markdown(payload)
    diff = np.subtract(gaps["COAT"], gaps["AT"])
    se = diff.std(ddof=1) / 2
    assert f"COAT − AT = {diff.mean():+.4f} ± {se:.4f} (standard error), COAT smaller in 2 of 4 splits" in text
    assert "AT − CRC = -0.0100" in text and "AT smaller in 3 of 4 splits" in text
    payload["split_wall_time_s"] = {"total": 600.0, "splits_timed": 3, "splits_untimed": 1}
    assert "10.0 min over 3 splits (1 earlier splits were recorded without a time)" in render_coat_markdown(payload)
    payload["environment"] = {"threads": 2}
    assert "10.0 min over 3 splits on 2 CPU thread(s) (1 earlier" in render_coat_markdown(payload)
    # a payload without per-split gaps (older runs) renders without the comparison
    for by in payload["results"]["0.1"].values():
        del by["per_split_coverage_gap"]
    assert "Paired" not in render_coat_markdown(payload)
