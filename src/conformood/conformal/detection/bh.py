"""Benjamini–Hochberg selection over a batch of conformal p-values."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from numpy.typing import ArrayLike

from ..._validation import check_alpha, check_scores


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


def benjamini_hochberg_exact(numerators: ArrayLike, denominators: ArrayLike, alpha: float) -> np.ndarray:
    """Benjamini–Hochberg on p-values given exactly as fractions p_i = numerators_i / denominators_i (conformal
    p-values are k / (n + 1)), decided in rational arithmetic: p_(i) <= α·i/m exactly, with α read as the decimal
    written (``Fraction(repr(alpha))``), as :func:`conformood.conformal.conformal_rank` reads it. A float
    comparison can disagree with the exact rule when α·i·(n + 1)/m is a whole number."""
    alpha = check_alpha(alpha)
    num = np.asarray(numerators, dtype=np.int64).ravel()
    den = np.asarray(denominators, dtype=np.int64).ravel()
    if num.shape != den.shape or num.size == 0:
        raise ValueError(f"numerators and denominators must be non-empty and of one shape, got {num.shape} and "
                         f"{den.shape}")
    if np.any(num < 1) or np.any(num > den):
        raise ValueError("p-values must be fractions in (0, 1]")
    a = Fraction(repr(alpha))
    m = num.size
    if np.all(den == den[0]):  # one calibration set: the order of the numerators is the order of the p-values
        order = np.argsort(num, kind="mergesort")
    else:
        order = np.array(sorted(range(m), key=lambda i: Fraction(int(num[i]), int(den[i]))), dtype=np.int64)
    last = 0
    big_a, big_b = a.numerator, a.denominator
    for rank, i in enumerate(order.tolist(), start=1):  # p_(rank) <= a·rank/m  <=>  num·b·m <= a·rank·den
        if int(num[i]) * big_b * m <= big_a * rank * int(den[i]):
            last = rank
    rejected = np.zeros(m, dtype=bool)
    rejected[order[:last]] = True
    return rejected
