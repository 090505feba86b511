"""Segmentation risk metrics of ``coat-adaptive-threshold-segmentation.md``: per-image TPR/FNR, FPR, set size,
marginal coverage (eq. 2) and coverage gap (COAT eq. 3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .._validation import as_numpy, check_alpha, check_masks, check_positive_counts


@dataclass(frozen=True)
class SegmentationRisk:
    """Per-image quantities of a set of predicted masks against ground truth (|Y| > 0 for every image)."""

    tpr: np.ndarray
    fpr: np.ndarray
    set_size: np.ndarray

    @property
    def fnr(self) -> np.ndarray:
        return 1.0 - self.tpr


def segmentation_risk(sets: ArrayLike, masks: ArrayLike) -> SegmentationRisk:
    """Per-image TPR = |Ĉ ∩ Y|/|Y|, FPR = |Ĉ \\ Y|/|Yᶜ| (0 when Y covers the image) and |Ĉ|/N."""
    c = as_numpy(sets)
    if c.dtype != bool:
        raise ValueError(f"sets must be boolean maps, got dtype {c.dtype}")
    if c.ndim != 3:
        raise ValueError(f"sets must have shape (n_images, height, width), got {c.shape}")
    y = check_masks(masks, c.shape)
    sizes = check_positive_counts(y, "masks")
    n = c.shape[0]
    flat_c = c.reshape(n, -1)
    flat_y = y.reshape(n, -1)
    pixels = flat_c.shape[1]
    hits = np.count_nonzero(flat_c & flat_y, axis=1)
    chosen = np.count_nonzero(flat_c, axis=1)
    negatives = pixels - sizes
    fpr = np.divide(chosen - hits, negatives, out=np.zeros(n), where=negatives > 0)
    return SegmentationRisk(tpr=hits / sizes, fpr=fpr, set_size=chosen / pixels)


def marginal_coverage(tpr: ArrayLike) -> float:
    """COAT eq. 2: the mean per-image TPR."""
    t = np.asarray(tpr, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"tpr must be a non-empty 1-D array, got shape {t.shape}")
    return float(t.mean())


def coverage_gap(tpr: ArrayLike, alpha: float) -> float:
    """COAT eq. 3: the mean |TPR_i − (1 − α)| over images."""
    alpha = check_alpha(alpha)
    t = np.asarray(tpr, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"tpr must be a non-empty 1-D array, got shape {t.shape}")
    return float(np.mean(np.abs(t - (1.0 - alpha))))
