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


def per_region_overlap(maps: ArrayLike, masks: ArrayLike, max_fpr: float = 0.3, n_thresholds: int = 200
                       ) -> float:
    """PRO (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021): the area under the per-region
    overlap curve up to a false-positive rate ``max_fpr``, divided by ``max_fpr`` (1 = every defect region fully
    covered before any good pixel is marked).

    For a threshold t, the per-region overlap is the mean over the connected defect regions (8-connectivity) of all
    images of the fraction of the region's pixels with map ≥ t; the false-positive rate is the fraction of good
    pixels with map ≥ t. Thresholds are the quantiles of the good pixels' values that give ``n_thresholds`` FPRs
    evenly spaced in [0, max_fpr]; the curve is integrated by the trapezoidal rule. ``maps`` float and ``masks``
    bool, both (n, h, w)."""
    from scipy import ndimage

    m = np.asarray(maps, dtype=np.float64)
    y = np.asarray(masks)
    if m.shape != y.shape or m.ndim != 3:
        raise ValueError(f"maps and masks must both be (n, h, w), got {m.shape} and {y.shape}")
    if y.dtype != bool:
        raise ValueError(f"masks must be boolean, got {y.dtype}")
    if not np.isfinite(m).all():
        raise ValueError("maps hold NaN or infinite values")
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must lie in (0, 1], got {max_fpr}")
    if not y.any() or y.all():
        raise ValueError("PRO needs defect pixels and good pixels")
    regions = []
    structure = np.ones((3, 3), dtype=bool)
    for i in range(y.shape[0]):
        labels, n = ndimage.label(y[i], structure=structure)
        for r in range(1, n + 1):
            regions.append(np.sort(m[i][labels == r]))
    good = np.sort(m[~y])
    fprs = np.linspace(0.0, max_fpr, n_thresholds)
    # the threshold at which a fraction f of the good pixels lies at or above it
    ranks = np.clip(np.ceil((1.0 - fprs) * good.size).astype(np.int64), 0, good.size - 1)
    thresholds = good[ranks]
    thresholds[0] = np.nextafter(good[-1], np.inf)  # FPR 0: above every good pixel
    realised = 1.0 - np.searchsorted(good, thresholds, side="left") / good.size
    overlap = np.mean([1.0 - np.searchsorted(r, thresholds, side="left") / r.size for r in regions], axis=0)
    order = np.argsort(realised, kind="stable")
    x, v = np.r_[realised[order], max_fpr], np.r_[overlap[order], overlap[order][-1]]
    keep = x <= max_fpr
    return float(np.trapezoid(v[keep], x[keep]) / max_fpr)
