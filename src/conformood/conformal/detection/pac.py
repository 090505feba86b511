"""Calibration-conditional guarantees: PAC thresholds and calibration-conditional conformal p-values.

A marginal conformal threshold keeps P(an in-distribution input is flagged) ≤ α *averaged over the draw of the
calibration set*; the false-alarm rate of one deployed threshold is a random variable around α. For continuous
scores, the threshold at the k-th smallest of n calibration scores has false-alarm rate F(S_(k)) ~ Beta(k,
n + 1 − k) (the k-th uniform order statistic), so

    P_calibration( FPR > α ) = P( Beta(k, n + 1 − k) > α ) = P( Binomial(n, α) ≤ k − 1 ).

:func:`pac_rank` picks the largest k with that probability ≤ δ: with probability ≥ 1 − δ over the
calibration set, the deployed threshold's false-alarm rate is ≤ α (a PAC, or "training-conditional",
guarantee; Vovk 2012, Bates et al. 2023 §3). With ties the rate is only smaller.

Calibration-conditional p-values (Bates et al. 2023, "Testing for outliers with conformal p-values", §3) adjust
the marginal p-value p = k / (n + 1) to p̃ = b_k, where the sequence b satisfies P(U_(i) ≤ b_i for all i) ≥ 1 − δ
for n uniform order statistics (b_{n+1} = 1). On that event, which has probability ≥ 1 − δ over the calibration
set, P(p̃(X) ≤ t | calibration) ≤ t for every t, so Benjamini–Hochberg over p̃ controls the FDR given the
calibration set. Two sequences: the generalized Simes bound and the DKWM bound.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import stats

from ..._validation import check_alpha, check_positive_int


def check_delta(delta: float) -> float:
    """δ, the probability over the calibration set that a calibration-conditional guarantee may fail."""
    return check_alpha(delta, "delta")


def pac_failure_probability(k: int, n: int, alpha: float) -> float:
    """P_calibration(FPR of the k-th smallest calibration score as threshold > α) = P(Binomial(n, α) ≤ k − 1),
    exact for continuous scores."""
    if k <= 0:
        return 0.0
    return float(stats.binom.cdf(k - 1, n, alpha))


def pac_min_calibration(alpha: float, delta: float) -> int:
    """The smallest n for which a PAC threshold at (α, δ) flags anything: (1 − α)^n ≤ δ."""
    alpha, delta = check_alpha(alpha), check_delta(delta)
    n = math.ceil(math.log(delta) / math.log1p(-alpha))
    while (1 - alpha) ** n > delta:  # guard the rounding of the logarithms
        n += 1
    while n > 1 and (1 - alpha) ** (n - 1) <= delta:
        n -= 1
    return n


@lru_cache(maxsize=4096)
def pac_rank(alpha: float, delta: float, n: int) -> int:
    """The largest k in 0..n with P(Binomial(n, α) ≤ k − 1) ≤ δ: flagging p = j / (n + 1) ≤ k / (n + 1) (the
    score below the k-th smallest calibration score) keeps P_calibration(FPR > α) ≤ δ. 0 when n is below
    :func:`pac_min_calibration` (nothing can be flagged)."""
    alpha, delta = check_alpha(alpha), check_delta(delta)
    n = check_positive_int(n, "n")
    lo, hi = 0, n  # pac_failure_probability increases with k; find the last k with probability <= delta
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if pac_failure_probability(mid, n, alpha) <= delta:
            lo = mid
        else:
            hi = mid - 1
    return lo


@lru_cache(maxsize=256)
def conditional_bounds(n: int, delta: float, method: str = "simes", simes_k: int | None = None) -> np.ndarray:
    """b_1 ≤ … ≤ b_n, b_{n+1} = 1 (an array of n + 1 values) with P(U_(i) ≤ b_i for all i) ≥ 1 − δ.

    * ``"simes"``: the generalized Simes bound (Bates et al. 2023, eq. 9 with parameter k, default n / 2):
      b_{n+1−i} = 1 − δ^{1/k} (i (i − 1) ⋯ (i − k + 1) / (n (n − 1) ⋯ (n − k + 1)))^{1/k} for i ≥ k, and
      b_{n+1−i} = 1 for i < k;
    * ``"dkwm"``: b_i = min(1, i / n + sqrt(log(2 / δ) / (2 n))), from the Dvoretzky–Kiefer–Wolfowitz–Massart
      inequality.
    """
    n = check_positive_int(n, "n")
    delta = check_delta(delta)
    b = np.ones(n + 1)
    if method == "dkwm":
        b[:n] = np.minimum(1.0, np.arange(1, n + 1) / n + math.sqrt(math.log(2.0 / delta) / (2.0 * n)))
        return b
    if method != "simes":
        raise ValueError(f"method must be 'simes' or 'dkwm', got {method!r}")
    k = check_positive_int(simes_k if simes_k is not None else max(1, n // 2), "simes_k")
    if k > n:
        raise ValueError(f"simes_k must be at most n = {n}, got {k}")
    i = np.arange(1, n + 1)  # b_{n+1-i}
    # log of i (i-1)...(i-k+1) / (n (n-1)...(n-k+1)) = lgamma(i+1) - lgamma(i-k+1) - (lgamma(n+1) - lgamma(n-k+1))
    from scipy.special import gammaln

    ii = np.maximum(i, k)
    log_ratio = gammaln(ii + 1) - gammaln(ii - k + 1) - (gammaln(n + 1) - gammaln(n - k + 1))
    c = np.where(i >= k, np.exp((math.log(delta) + log_ratio) / k), 0.0)
    b_rev = 1.0 - c  # b_{n+1-i} for i = 1..n
    b[:n] = b_rev[::-1]
    return b


def conditional_p_values(ranks: np.ndarray, n: int, delta: float, method: str = "simes") -> np.ndarray:
    """Calibration-conditional p-values b_k for marginal ranks k = 1 + #{calibration scores ≤ s} (1..n+1)."""
    b = conditional_bounds(int(n), float(delta), method)
    k = np.asarray(ranks, dtype=np.int64)
    if k.size and (k.min() < 1 or k.max() > n + 1):
        raise ValueError(f"ranks must lie in 1..{n + 1}")
    return b[k - 1]
