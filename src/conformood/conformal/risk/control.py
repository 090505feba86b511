"""Conformal risk control of the false-negative rate in binary segmentation, computed exactly.

Paper: ``coat-adaptive-threshold-segmentation.md`` (CRC, AT and COAT). Notation: an image has a probability
map p̂(X) ∈ [0, 1]^N and a ground-truth mask Y with |Y| > 0; the per-image TPR of a set Ĉ is |Ĉ ∩ Y| / |Y| and
the FNR is 1 − TPR.

* :func:`crc_threshold` — COAT eq. 5: the largest τ with (1/(n+1))·Σ FNR_i(τ) + B/(n+1) ≤ α for the global sets
  Ĉ(X, τ) = {j : p̂_j ≥ τ} (COAT eq. 4). Σ_i TPR_i(τ) is a step function of τ whose jumps sit at the positive
  pixels' probabilities, each jump of height 1/|Y_i|: the answer is an order statistic of the pooled positive
  probabilities found with one sort, no grid and no root finding.
* :func:`adaptive_correction` — COAT Algorithm 1 lines 15–21 (and COAT eq. 14): t' = inf{t : R(t) ≥ (n+1)(1−α)/n} for
  per-image thresholds clip(τ̂_i − t, 0, 1). Pixel j of image i enters the set exactly when t ≥ τ̂_i − p̂_j
  (or always when p̂_j = 1), so R is again a step function with known jumps: one sort.
* The prediction sets of both, and the oracle thresholds that AT trains on, are in
  :mod:`conformood.conformal.risk.sets`.

Both searches compare cumulative sums of fractions 1/|Y_i| against a level; near a tie the comparison is
redone in exact rational arithmetic, so an α that makes the level land exactly on a jump gives the same
answer as exact arithmetic (floats alone would be off by one jump).

Images with an empty mask have no FNR (the paper restricts to |Y| > 0); they must be removed before
calibration — :func:`nonempty_masks` says which — and are refused here with a clear error.
"""

from __future__ import annotations

import math
import numbers
import warnings
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..._validation import (
    as_numpy,
    check_alpha,
    check_masks,
    check_positive_counts,
    check_probability_maps,
    nonempty_masks,
    probability_array,
)
from ..detection.split import ConformalWarning

__all__ = [
    "adaptive_correction",
    "check_masks",
    "check_probability_maps",
    "compiled_kernel_available",
    "crc_threshold",
    "nonempty_masks",
]

# Relative width of the band around the level inside which cumulative float sums are re-checked exactly.
_TIE_BAND = 1e-9


def _check_pair(probs, masks, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = check_probability_maps(probs, f"{name} probability maps")
    m = check_masks(masks, p.shape, f"{name} masks")
    return p, m, check_positive_counts(m, f"{name} masks")


def _exact_sum(counts_at_k: np.ndarray, sizes: np.ndarray) -> Fraction:
    """Σ_i counts_i / sizes_i in exact rational arithmetic (only called near a tie)."""
    total = Fraction(0)
    for c, s in zip(counts_at_k.tolist(), sizes.tolist()):
        if c:
            total += Fraction(c, s)
    return total


def _first_reaching_sorted(
    values: np.ndarray, heights: np.ndarray, image_of: np.ndarray, sizes: np.ndarray, level: Fraction
) -> float | None:
    """Smallest jump value v with Σ_{jumps ≤ v} heights ≥ level, by one full sort (reference path).

    Candidates whose float cumulative sum lies within a relative band of the level are decided with exact
    fractions over the per-image counts. Returns None when even all jumps do not reach the level.
    """
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(heights[order])
    lvl = float(level)
    band = _TIE_BAND * max(1.0, abs(lvl))
    lo = int(np.searchsorted(cumulative, lvl - band, side="left"))
    hi = int(np.searchsorted(cumulative, lvl + band, side="left"))
    if lo >= cumulative.size:
        return None
    if lo == hi:
        return float(values[order[lo]])
    # Ambiguous within float error: decide exactly, scanning the (few) candidates in order.
    sorted_images = image_of[order]
    counts = np.bincount(sorted_images[: lo + 1], minlength=sizes.size)
    for k in range(lo, min(hi, cumulative.size - 1) + 1):
        if k > lo:
            counts[sorted_images[k]] += 1
        if _exact_sum(counts, sizes) >= level:
            return float(values[order[k]])
    return None


_BUCKETS = 2048
_SMALL = 4096


def _first_reaching(
    values: np.ndarray,
    heights: np.ndarray,
    image_of: np.ndarray,
    sizes: np.ndarray,
    level: Fraction,
    bounds: tuple[float, float] | None = None,
    all_finite: bool | None = None,
) -> float | None:
    """:func:`_first_reaching_sorted` without sorting everything: the same answer in O(N).

    The jumps are binned into equal-width buckets of their value range; one weighted histogram finds the
    bucket where the cumulative height crosses the level; only that bucket's jumps are sorted (narrowing
    again while it is large). Whenever the crossing lies within float error of a bucket or jump boundary,
    the exact sorted path decides. ``bounds`` (lo ≤ min, max ≤ hi of the finite values) and ``all_finite``
    may be passed when the caller knows them, saving passes over the data.
    """
    lvl = float(level)
    band = _TIE_BAND * max(1.0, abs(lvl))
    if values.size <= _SMALL:
        return _first_reaching_sorted(values, heights, image_of, sizes, level)
    below = 0.0  # total height of the jumps already known to precede the current candidates
    finite = None if all_finite else np.isfinite(values)
    if finite is not None and not finite.all():  # -inf jumps (p = 1 pixels) come first
        below = float(heights[~finite].sum())
        if below >= lvl - band:
            return _first_reaching_sorted(values, heights, image_of, sizes, level)
        idx = np.flatnonzero(finite)
        cand_v, cand_h = values[idx], heights[idx]
    else:
        cand_v, cand_h = values, heights
    while cand_v.size > _SMALL:
        if bounds is not None and finite is None:
            lo, hi = bounds
        else:
            lo, hi = float(cand_v.min()), float(cand_v.max())
        bounds = None
        if not 0.0 < hi - lo < np.inf:  # one value left, or a span that overflows (thresholds near ±1e308)
            return _first_reaching_sorted(values, heights, image_of, sizes, level)
        # (B - 0.5) / (hi - lo) keeps the largest value's bucket below B despite rounding.
        scale = (_BUCKETS - 0.5) / (hi - lo)
        shifted = cand_v - lo
        shifted *= scale
        bucket = shifted.astype(np.intp)
        cumulative = below + np.cumsum(np.bincount(bucket, weights=cand_h, minlength=_BUCKETS))
        j = int(np.searchsorted(cumulative, lvl - band, side="left"))
        if j >= _BUCKETS:
            return None
        if cumulative[j] < lvl + band:
            # The level sits within float error of this bucket's end: let the exact path decide.
            return _first_reaching_sorted(values, heights, image_of, sizes, level)
        if j:
            below = float(cumulative[j - 1])
        keep = bucket == j
        cand_v, cand_h = cand_v[keep], cand_h[keep]
    order = np.argsort(cand_v, kind="stable")
    cumulative = below + np.cumsum(cand_h[order])
    k_lo = int(np.searchsorted(cumulative, lvl - band, side="left"))
    k_hi = int(np.searchsorted(cumulative, lvl + band, side="left"))
    if k_lo != k_hi or k_lo >= cumulative.size:
        return _first_reaching_sorted(values, heights, image_of, sizes, level)
    return float(cand_v[order[k_lo]])


# -- compiled fast path ------------------------------------------------------------------------------------
# With numba available, both calibrations read each map once in a compiled kernel (see _jumps_kernel) instead
# of materialising every positive pixel; any doubt (invalid input, a level within float error of a bucket or
# jump boundary) sends the call down the checked numpy path, which raises or decides exactly.
USE_COMPILED_KERNEL = True
_FAST_BUCKETS = 1 << 13  # at most 65535 (the kernel stores buckets as uint16)
_FAST_MIN_PIXELS = 1 << 16
_FALLBACK = object()
_kernel_module: Any = None


def _kernel():
    global _kernel_module
    if _kernel_module is None:
        try:
            from . import _jumps_kernel
        except ImportError:  # numba missing or broken: the numpy path is exact too, only slower
            _kernel_module = False
        else:
            _kernel_module = _jumps_kernel
    return _kernel_module or None


def compiled_kernel_available() -> bool:
    """Whether the compiled (numba) calibration kernel is used for large inputs."""
    return USE_COMPILED_KERNEL and _kernel() is not None


def _fast_first_reaching(p: np.ndarray, m: np.ndarray, tau: np.ndarray, one_is_always_in: bool,
                         bounds: tuple[float, float], level: Fraction):
    """The jump selected by :func:`_first_reaching`, from the maps directly; ``_FALLBACK`` when unsure."""
    if not (USE_COMPILED_KERNEL and p.size >= _FAST_MIN_PIXELS and m.dtype == bool) or _kernel() is None:
        return _FALLBACK
    import numba

    kernel = _kernel()
    n = p.shape[0]
    p2 = np.ascontiguousarray(p).reshape(n, -1)
    m2 = np.ascontiguousarray(m).reshape(n, -1)
    chunks = max(1, min(n, numba.get_num_threads()))
    lo, hi = bounds
    if not 0.0 < hi - lo < np.inf:  # thresholds so large that tau - 1 rounds to tau, or a span that overflows
        return _FALLBACK
    scale = (_FAST_BUCKETS - 0.5) / (hi - lo)
    sizes, hist, always, bad, positives, buckets = kernel.jump_histogram(
        p2, m2, tau, one_is_always_in, lo, scale, _FAST_BUCKETS, chunks)
    if bad or not sizes.all():
        return _FALLBACK  # the checked path raises the precise error
    lvl = float(level)
    band = _TIE_BAND * max(1.0, abs(lvl))
    if always >= lvl - band:
        return _FALLBACK
    cumulative = always + np.cumsum(hist.sum(axis=0))
    j = int(np.searchsorted(cumulative, lvl - band, side="left"))
    if j >= _FAST_BUCKETS:
        return None
    if cumulative[j] < lvl + band:
        return _FALLBACK
    below = float(cumulative[j - 1]) if j else float(always)
    values, images = kernel.gather_bucket(positives, buckets, sizes, p2.shape[1], tau, j, chunks)
    order = np.argsort(values, kind="stable")
    running = below + np.cumsum(1.0 / sizes[images[order]])
    k_lo = int(np.searchsorted(running, lvl - band, side="left"))
    k_hi = int(np.searchsorted(running, lvl + band, side="left"))
    if k_lo != k_hi or k_lo >= running.size:
        return _FALLBACK
    return float(values[order[k_lo]])


def _fraction(value: float) -> Fraction:
    return Fraction(repr(float(value)))


def crc_threshold(probs: ArrayLike, masks: ArrayLike, alpha: float, loss_bound: float = 1.0) -> float:
    """CRC threshold τ' of COAT eq. 5 for the sets {j : p̂_j ≥ τ} (COAT eq. 4), computed exactly.

    τ' = sup{τ : (1/(n+1)) Σ_i FNR_i(τ) + B/(n+1) ≤ α}. With S(τ) = Σ_i TPR_i(τ) the condition reads
    S(τ) ≥ n + B − (n+1)α. S is non-increasing and jumps by 1/|Y_i| at each positive pixel's probability,
    so τ' is the probability of the first positive pixel (in decreasing order) at which the cumulative jump
    height reaches that level. Ties are handled exactly; a level that lands on a jump is decided in
    rational arithmetic.

    Returns ``inf`` when every τ satisfies the condition (α so large that the empty set is allowed) and
    ``0.0`` with a :class:`ConformalWarning` when no τ does (α < B/(n+1)): the full image is then the only
    safe set, and it has FNR 0.

    Parameters
    ----------
    probs : array (n, h, w)
        Calibration probability maps in [0, 1].
    masks : array (n, h, w)
        Ground-truth masks (bool or 0/1), each with at least one positive pixel.
    alpha : float in (0, 1)
        Target expected FNR.
    loss_bound : float
        B, an upper bound of the loss (1 for the FNR).

    Examples
    --------
    >>> p = np.array([[[0.9, 0.2]], [[0.6, 0.4]]])
    >>> y = np.array([[[1, 1]], [[1, 0]]])
    >>> crc_threshold(p, y, alpha=0.5)
    0.6
    """
    alpha = check_alpha(alpha)
    if isinstance(loss_bound, bool) or not isinstance(loss_bound, numbers.Real) or not (
            np.isfinite(loss_bound) and loss_bound > 0):
        raise ValueError(f"loss_bound must be a finite number > 0, got {loss_bound!r}")
    p = probability_array(probs, "calibration probability maps")
    m = check_masks(masks, p.shape, "calibration masks")
    n = p.shape[0]
    level = n + _fraction(loss_bound) - (n + 1) * _fraction(alpha)
    # Decreasing probabilities = increasing -p; the jump at p_j has height 1/|Y_i|.
    found = _fast_first_reaching(p, m, np.zeros(n), False, (-1.0, 0.0), level) if level > 0 else _FALLBACK
    if found is _FALLBACK:
        p, m, sizes = _check_pair(p, m, "calibration")
        if level <= 0:
            return math.inf
        image_of = np.repeat(np.arange(n), sizes)
        jumps = -p[m].astype(np.float64)
        heights = np.repeat(1.0 / sizes, sizes)
        found = _first_reaching(jumps, heights, image_of, sizes, level, (-1.0, 0.0), True)
    if found is None:
        warnings.warn(
            f"alpha = {alpha} is below B/(n+1) = {loss_bound}/{n + 1}: no threshold controls the risk with "
            f"{n} calibration images; returning 0 (every pixel in the set)",
            ConformalWarning,
            stacklevel=2,
        )
        return 0.0
    return -found


def adaptive_correction(probs: ArrayLike, masks: ArrayLike, base_thresholds: ArrayLike, alpha: float) -> float:
    """Global correction t' of COAT Algorithm 1 (lines 15–17; COAT eq. 14), computed exactly from the sorted jumps.

    R(t) = (1/n) Σ_i |{p̂(X_i) ≥ clip(τ̂_i − t, 0, 1)} ∩ Y_i| / |Y_i| and t' = inf{t : R(t) ≥ (n+1)(1−α)/n}.
    Pixel j of image i is in the set iff p̂_j = 1 or t ≥ e_j := τ̂_i − p̂_j, so R jumps by 1/(n|Y_i|) at
    each e_j and t' is the e_j at which the cumulative jump height first reaches (n+1)(1−α). The test
    sets are then ``adaptive_sets(probs, base_thresholds, t')`` with per-image thresholds
    clip(τ̂_i − t', 0, 1) (lines 18–21).

    When α < 1/(n+1) no t reaches the level: a :class:`ConformalWarning` is raised and the t that makes
    every threshold 0 (full sets) is returned. ``-inf`` means the pixels with p̂ = 1 already suffice.

    Parameters
    ----------
    probs, masks : arrays (n, h, w)
        Calibration probability maps and non-empty masks.
    base_thresholds : array (n,)
        τ̂_i = f_D(X_i, p̂(X_i)) from AT or COAT (any finite reals; the clip happens inside the sets).
    alpha : float in (0, 1)

    Examples
    --------
    >>> p = np.array([[[0.9, 0.2]], [[0.6, 0.4]]])
    >>> y = np.array([[[1, 1]], [[1, 0]]])
    >>> adaptive_correction(p, y, [0.5, 0.5], alpha=0.4)     # needs R(t) >= 0.9: both pixels of image 0
    0.3
    """
    alpha = check_alpha(alpha)
    p = probability_array(probs, "calibration probability maps")
    m = check_masks(masks, p.shape, "calibration masks")
    n = p.shape[0]
    tau = _check_thresholds(base_thresholds, n)
    level = (n + 1) * (1 - _fraction(alpha))
    bounds = (float(tau.min()) - 1.0, float(tau.max()))
    found = _fast_first_reaching(p, m, tau, True, bounds, level)
    if found is _FALLBACK:
        p, m, sizes = _check_pair(p, m, "calibration")
        values = p[m]
        image_of = np.repeat(np.arange(n), sizes)
        # repeat() of per-image values is several times faster than gathering them through image_of.
        jumps = np.repeat(tau, sizes)
        jumps -= values
        all_finite = not values.max() >= 1.0
        if not all_finite:
            jumps[values >= 1.0] = -math.inf
        heights = np.repeat(1.0 / sizes, sizes)
        found = _first_reaching(jumps, heights, image_of, sizes, level, bounds, all_finite)
    if found is None:
        warnings.warn(
            f"alpha = {alpha} is below 1/(n+1) = 1/{n + 1}: no correction reaches the level with {n} "
            "calibration images; returning the correction that puts every pixel in the set",
            ConformalWarning,
            stacklevel=2,
        )
        return float(max(tau.max(), 0.0))
    return found


def _check_thresholds(base_thresholds, n: int) -> np.ndarray:
    tau = as_numpy(base_thresholds).astype(np.float64, copy=False).reshape(-1)
    if tau.shape[0] != n:
        raise ValueError(f"base_thresholds must have one value per image ({n}), got {tau.shape[0]}")
    if not np.all(np.isfinite(tau)):
        raise ValueError("base_thresholds contains NaN or infinite values")
    return tau
