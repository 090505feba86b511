"""Theorem 1 (and CRC's eq. 5 guarantee) over many random calibration/test splits.

The pool is fixed; each split is a random permutation of it, so calibration and test images are
exchangeable and E[test TPR] ≥ 1 − α holds exactly (and ≤ 1 − α + 2/(n+1) for CRC-type rules on
continuous scores). We check the mean over splits to 3 standard errors of the split-to-split spread.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformood.conformal.risk.control import adaptive_correction, crc_threshold
from conformood.conformal.risk.sets import adaptive_sets, crc_sets
from conformood.conformal.risk.threshold_training import train_threshold_predictor
from conformood.data.segmentation import synthetic_segmentation
from conformood.metrics.segmentation import coverage_gap, segmentation_risk

N_SPLITS = 300
N_CAL = 60


@pytest.fixture(scope="module")
def pool():
    data, probs = synthetic_segmentation(1400, 16, 16, seed=7)
    fit = slice(0, 200)
    images = data.float_images()
    taus = {}
    for alpha in (0.1, 0.2):
        for method in ("at", "coat"):
            trained = train_threshold_predictor(
                images[fit], probs[fit], data.masks[fit], alpha, method=method, epochs=15, seed=0
            )
            taus[method, alpha] = trained.predict(images[200:], probs[200:])
    return probs[200:], data.masks[200:], taus


@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("method", ["crc", "at", "coat"])
def test_mean_test_tpr_is_at_least_target(pool, method, alpha):
    probs, masks, taus = pool
    rng = np.random.default_rng(11)
    n = probs.shape[0]
    means, gaps = [], []
    for _ in range(N_SPLITS):
        order = rng.permutation(n)
        cal, test = order[:N_CAL], order[N_CAL:]
        if method == "crc":
            sets = crc_sets(probs[test], crc_threshold(probs[cal], masks[cal], alpha))
        else:
            tau = taus[method, alpha]
            t = adaptive_correction(probs[cal], masks[cal], tau[cal], alpha)
            sets = adaptive_sets(probs[test], tau[test], t)
        tpr = segmentation_risk(sets, masks[test]).tpr
        means.append(tpr.mean())
        gaps.append(coverage_gap(tpr, alpha))
    means = np.asarray(means)
    se = means.std(ddof=1) / np.sqrt(N_SPLITS)
    assert means.mean() >= 1 - alpha - 3 * se, (method, alpha, means.mean(), se)
    assert means.mean() <= 1 - alpha + 2 / (N_CAL + 1) + 3 * se, (method, alpha, means.mean(), se)


def test_adaptive_thresholds_narrow_the_gap_on_adaptive_data(pool):
    """The synthetic pool is built so that per-image difficulty is visible; COAT must use it."""
    probs, masks, taus = pool
    rng = np.random.default_rng(0)
    order = rng.permutation(probs.shape[0])
    cal, test = order[:300], order[300:]
    alpha = 0.1
    crc = segmentation_risk(crc_sets(probs[test], crc_threshold(probs[cal], masks[cal], alpha)), masks[test])
    tau = taus["coat", alpha]
    t = adaptive_correction(probs[cal], masks[cal], tau[cal], alpha)
    coat = segmentation_risk(adaptive_sets(probs[test], tau[test], t), masks[test])
    assert coverage_gap(coat.tpr, alpha) < coverage_gap(crc.tpr, alpha)
