"""Prediction sets of conformal risk control (``coat-adaptive-threshold-segmentation.md``), and the oracle
thresholds AT regresses onto.

* :func:`crc_sets` — COAT eq. 4/6, the global sets {p̂_j ≥ τ};
* :func:`adaptive_sets` — COAT Algorithm 1 line 20, per-image thresholds clip(τ̂_i − t', 0, 1);
* :func:`oracle_thresholds` — §3.1.2: per image, the largest τ whose hard mask has TPR ≥ 1 − α (the
  training target τ*(X, Y) of AT), the ⌈(1−α)|Y|⌉-th largest positive probability.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ..._validation import as_numpy, check_alpha, check_probability_maps
from .control import _check_pair, _check_thresholds, _fraction


def crc_sets(probs: ArrayLike, threshold: float) -> np.ndarray:
    """Prediction sets of COAT eq. 4/6: the boolean maps {p̂_j ≥ τ}."""
    p = check_probability_maps(probs)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) or np.isnan(
        threshold
    ):
        raise ValueError(f"threshold must be a real number (or ±inf), got {threshold!r}")
    return p >= threshold


def adaptive_sets(probs: ArrayLike, base_thresholds: ArrayLike, correction: float) -> np.ndarray:
    """Prediction sets of COAT Algorithm 1 line 20: {p̂ ≥ clip(τ̂_i − t', 0, 1)}, as boolean maps (n, h, w).

    Written as ``p̂ = 1 or τ̂_i − p̂ ≤ t'`` — the same set for probabilities in [0, 1] — so the inclusion
    rule uses the very arithmetic of :func:`adaptive_correction` and a calibration pixel on the boundary is
    never lost to rounding.
    """
    p = check_probability_maps(probs)
    tau = _check_thresholds(base_thresholds, p.shape[0])
    return (p >= 1.0) | ((tau[:, None, None] - p) <= correction)


def per_image_thresholds(base_thresholds: ArrayLike, correction: float) -> np.ndarray:
    """The adjusted thresholds clip(τ̂_i − t', 0, 1) of COAT Algorithm 1 line 19 (for reporting)."""
    tau = as_numpy(base_thresholds).astype(np.float64).reshape(-1)
    return np.clip(tau - correction, 0.0, 1.0)


def oracle_thresholds(probs: ArrayLike, masks: ArrayLike, alpha: float) -> np.ndarray:
    """τ*(X, Y) of §3.1.2 per image: the largest τ whose hard mask {p̂ ≥ τ} has TPR ≥ 1 − α.

    TPR(τ) is a step function, so "TPR = 1 − α" is met only up to the step; the largest τ reaching it is
    the k-th largest positive probability with k = ⌈(1 − α)|Y|⌉ computed in integer arithmetic.
    """
    alpha = check_alpha(alpha)
    p, m, sizes = _check_pair(probs, masks, "")
    keep = 1 - _fraction(alpha)
    out = np.empty(p.shape[0], dtype=np.float64)
    for i in range(p.shape[0]):
        positives = p[i][m[i]]
        k = math.ceil(keep * int(sizes[i]))
        # k-th largest = (size - k)-th smallest (0-based).
        out[i] = float(np.partition(positives, positives.size - k)[positives.size - k])
    return out
