"""Threshold-free and fixed-recall OOD metrics.

Convention (as in the papers): scores are normality scores, higher = more in-distribution, and
**in-distribution is the positive class**. ``is_inlier`` is True for in-distribution samples.
AUPR-Out treats OOD as the positive class with the negated score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from .._validation import check_binary_labels, check_scores


def _check(scores, is_inlier) -> tuple[np.ndarray, np.ndarray]:
    s = check_scores(scores, "scores")
    y = check_binary_labels(is_inlier, "is_inlier", s.shape[0])
    n_in = int(y.sum())
    if n_in == 0 or n_in == y.shape[0]:
        raise ValueError(
            "metrics need both in-distribution and OOD samples; "
            f"got {n_in} inlier(s) and {y.shape[0] - n_in} OOD sample(s)"
        )
    return s, y


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds) with thresholds at distinct scores, decreasing (inputs already checked:
    float scores and a boolean positive mask with both classes present)."""
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    y = positive[order]
    distinct = np.flatnonzero(np.diff(s)) if s.size > 1 else np.empty(0, dtype=np.int64)
    ends = np.r_[distinct, s.size - 1]
    tps = np.cumsum(y)[ends].astype(np.float64)
    fps = (ends + 1 - tps).astype(np.float64)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, s[ends]]


def auroc(scores: ArrayLike, is_inlier: ArrayLike) -> float:
    """Area under the ROC curve, in-distribution positive (ties count one half)."""
    s, y = _check(scores, is_inlier)
    fpr, tpr, _ = roc_curve(s, y)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Step-wise average precision, sum_k (R_k - R_{k-1}) P_k (same definition as scikit-learn)."""
    fpr, tpr, _ = roc_curve(scores, positive)
    n_pos = positive.sum()
    n_neg = positive.size - n_pos
    tps = tpr[1:] * n_pos
    fps = fpr[1:] * n_neg
    precision = tps / (tps + fps)
    return float(np.sum(np.diff(tpr) * precision))


def aupr_in(scores: ArrayLike, is_inlier: ArrayLike) -> float:
    """Area under the precision-recall curve with in-distribution as the positive class."""
    s, y = _check(scores, is_inlier)
    return _average_precision(s, y)


def aupr_out(scores: ArrayLike, is_inlier: ArrayLike) -> float:
    """Area under the precision-recall curve with OOD as the positive class (score negated)."""
    s, y = _check(scores, is_inlier)
    return _average_precision(-s, ~y)


def fpr_at_tpr(scores: ArrayLike, is_inlier: ArrayLike, tpr_level: float = 0.95) -> float:
    """Fraction of OOD samples accepted when the threshold accepts ``tpr_level`` of the inliers.

    The threshold is the highest one whose true-positive rate (inliers accepted) is >= ``tpr_level``;
    the result is the false-positive rate (OOD accepted as in-distribution) there.
    """
    if not 0.0 < float(tpr_level) <= 1.0:
        raise ValueError(f"tpr_level must lie in (0, 1], got {tpr_level}")
    s, y = _check(scores, is_inlier)
    fpr, tpr, _ = roc_curve(s, y)
    idx = int(np.searchsorted(tpr, tpr_level - 1e-12, side="left"))
    return float(fpr[idx])


def fpr_at_95_tpr(scores: ArrayLike, is_inlier: ArrayLike) -> float:
    """FPR at 95 % TPR, in-distribution positive: OOD accepted when 95 % of inliers are accepted."""
    return fpr_at_tpr(scores, is_inlier, 0.95)


def detection_accuracy(scores: ArrayLike, is_inlier: ArrayLike) -> float:
    """Best balanced accuracy over thresholds: max_t 0.5 * (TPR(t) + 1 - FPR(t)) (Liang et al. 2018)."""
    s, y = _check(scores, is_inlier)
    fpr, tpr, _ = roc_curve(s, y)
    return float(np.max(0.5 * (tpr + 1.0 - fpr)))


@dataclass(frozen=True)
class OODMetrics:
    """The standard OOD metrics of one score on one test set (in-distribution positive)."""

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr95: float
    detection_accuracy: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ood_metrics(scores: ArrayLike, is_inlier: ArrayLike) -> OODMetrics:
    """All of :func:`auroc`, :func:`aupr_in`, :func:`aupr_out`, :func:`fpr_at_95_tpr`, detection accuracy."""
    s, y = _check(scores, is_inlier)
    return OODMetrics(
        auroc=auroc(s, y),
        aupr_in=aupr_in(s, y),
        aupr_out=aupr_out(s, y),
        fpr95=fpr_at_95_tpr(s, y),
        detection_accuracy=detection_accuracy(s, y),
    )


def flagged_rate(scores: ArrayLike, threshold: float) -> float:
    """Fraction of ``scores`` strictly below ``threshold`` (the inputs a threshold rule flags as OOD)."""
    s = check_scores(scores, "scores")
    return float(np.mean(s < threshold))


def aulc(aurocs: ArrayLike, epochs: ArrayLike | None = None) -> float:
    """Area under the learning curve (FIRM §3.2): the trapezoidal integral of AUROC over training, with the
    epoch axis rescaled to [0, 1] so that the value reads like an AUROC (the curve's mean level)."""
    a = check_scores(aurocs, "aurocs")
    if a.size == 1:
        return float(a[0])
    e = np.arange(a.size, dtype=np.float64) if epochs is None else check_scores(epochs, "epochs")
    if e.shape != a.shape or np.any(np.diff(e) <= 0):
        raise ValueError("epochs must be increasing and match aurocs in length")
    t = (e - e[0]) / (e[-1] - e[0])
    return float(np.sum(np.diff(t) * (a[1:] + a[:-1])) / 2.0)
