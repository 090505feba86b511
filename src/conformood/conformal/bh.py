"""Benjamini–Hochberg selection over a batch of conformal p-values."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._validation import check_alpha, check_scores


def benjamini_hochberg(p_values: ArrayLike, alpha: float) -> np.ndarray:
    """Boolean mask of the hypotheses rejected by the Benjamini–Hochberg step-up procedure at level alpha.

    Rejects the k smallest p-values, k = max{i : p_(i) <= i * alpha / m}. Conformal p-values of a test batch
    are positively dependent (PRDS; Bates et al. 2023, "Testing for outliers with conformal p-values"), so
    the false discovery rate among the flagged inputs is at most alpha (times the fraction of inliers).
    """
    p = check_scores(p_values, "p_values")
    alpha = check_alpha(alpha)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p_values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="mergesort")
    below = np.flatnonzero(p[order] <= alpha * np.arange(1, m + 1) / m)
    rejected = np.zeros(m, dtype=bool)
    if below.size:
        rejected[order[: below[-1] + 1]] = True
    return rejected
