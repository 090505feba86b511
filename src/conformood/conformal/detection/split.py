"""Split-conformal p-values and thresholds for any detector's scores.

Convention: scores are *normality* scores, higher = more in-distribution. A test point is flagged as
out-of-distribution when its score is unusually low compared with held-out in-distribution calibration
scores. Under exchangeability of the calibration scores and an in-distribution test score, both rules below
keep the probability of flagging an in-distribution input at most ``alpha`` (Vovk et al. 2005; Bates et al.
2023, "Testing for outliers with conformal p-values").
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
from numpy.typing import ArrayLike

from ..._validation import check_alpha, check_scores


class ConformalWarning(UserWarning):
    """A conformal rule was asked for a level it cannot reach with this many calibration points."""


def conformal_p_values(calibration_scores: ArrayLike, test_scores: ArrayLike) -> np.ndarray:
    """Conformal p-values p(x) = (1 + #{i : s_i <= s(x)}) / (n + 1).

    A small p-value means the test score is unusually low (unusually *abnormal*) among the calibration
    scores. For an in-distribution test point exchangeable with the calibration set,
    P(p(x) <= alpha) <= alpha for every alpha (super-uniform; uniform on {1/(n+1), ..., 1} without ties).

    Parameters
    ----------
    calibration_scores : array of shape (n,)
        Normality scores of held-out in-distribution data (higher = more in-distribution).
    test_scores : array of shape (m,)
        Normality scores of the inputs to test.

    Returns
    -------
    ndarray of shape (m,), values in [1/(n+1), 1].

    Examples
    --------
    >>> conformal_p_values([1.0, 2.0, 3.0], [0.5, 2.0, 9.0])
    array([0.25, 0.75, 1.  ])
    """
    cal = np.sort(check_scores(calibration_scores, "calibration_scores"))
    test = check_scores(test_scores, "test_scores")
    # One binary search per test point: count of calibration scores <= s(x).
    counts = np.searchsorted(cal, test, side="right")
    return (1.0 + counts) / (cal.shape[0] + 1.0)


def conformal_rank(alpha: float, n: int) -> int:
    """Exact k = floor(alpha * (n + 1)) in rational arithmetic.

    ``alpha`` is read as the decimal the user wrote (``Fraction(str(alpha))``), so alpha = 0.29 and
    n = 99 give k = 29 where ``math.floor(0.29 * 100)`` gives 28.
    """
    alpha = check_alpha(alpha)
    if n < 1:
        raise ValueError(f"need at least one calibration score, got n = {n}")
    return math.floor(Fraction(repr(alpha)) * (n + 1))


def conformal_threshold(calibration_scores: ArrayLike, alpha: float) -> float:
    """Threshold t such that flagging ``s(x) < t`` keeps P(in-distribution flagged) <= alpha.

    t is the k-th smallest calibration score with k = floor(alpha * (n + 1)) computed exactly. The rule
    "s(x) < t" is identical to "p(x) <= alpha" with :func:`conformal_p_values` (ties included), hence
    P(flag | in-distribution) <= k / (n + 1) <= alpha, with equality for continuous scores.

    When alpha < 1 / (n + 1) (k = 0) no finite threshold reaches the level: the function warns and returns
    ``-inf`` so that nothing is flagged, rather than silently using a clipped finite value.

    Examples
    --------
    >>> conformal_threshold(np.arange(1.0, 100.0), 0.29)   # n = 99, k = 29
    29.0
    """
    cal = check_scores(calibration_scores, "calibration_scores")
    n = cal.shape[0]
    k = conformal_rank(alpha, n)
    if k == 0:
        warnings.warn(
            f"alpha = {alpha} is below 1/(n+1) = {1.0 / (n + 1):.4g} with n = {n} calibration scores: "
            "no input can be flagged at this level; returning -inf (flags nothing). "
            f"Use at least {math.ceil(1.0 / alpha) - 1} calibration points.",
            ConformalWarning,
            stacklevel=2,
        )
        return float("-inf")
    return float(np.partition(cal, k - 1)[k - 1])
