"""Exact CRC / AT / COAT calibration against brute force in rational arithmetic, plus input validation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from conformood.conformal import ConformalWarning
from conformood.conformal.risk.control import (
    adaptive_correction,
    crc_threshold,
    nonempty_masks,
)
from conformood.conformal.risk.sets import (
    adaptive_sets,
    crc_sets,
    oracle_thresholds,
    per_image_thresholds,
)
from conformood.metrics.segmentation import (
    coverage_gap,
    marginal_coverage,
    segmentation_risk,
)

GRID = 16  # probabilities and base thresholds on a dyadic grid: every subtraction is exact in floats


def _problem(rng, n, h=3, w=4, grid=GRID):
    probs = rng.integers(0, grid + 1, size=(n, h, w)) / grid
    masks = rng.random((n, h, w)) < 0.4
    for i in range(n):
        if not masks[i].any():
            masks[i, rng.integers(h), rng.integers(w)] = True
    return probs, masks


def _tpr_sum(included, masks) -> Fraction:
    return sum(
        (Fraction(int((inc & m).sum()), int(m.sum())) for inc, m in zip(included, masks)), Fraction(0)
    )


def _brute_crc(probs, masks, alpha, bound=1.0):
    """sup{τ : (1/(n+1)) Σ FNR_i(τ) + B/(n+1) ≤ α} by trying every candidate τ, in exact fractions."""
    n = probs.shape[0]
    a, b = Fraction(repr(alpha)), Fraction(repr(bound))

    def ok(tau):
        fnr = n - _tpr_sum(probs >= tau, masks)
        return fnr / (n + 1) + b / (n + 1) <= a

    if ok(math.inf):
        return math.inf
    feasible = [t for t in np.unique(probs) if ok(t)]
    return max(feasible) if feasible else None


def _brute_correction(probs, masks, tau_hat, alpha):
    """inf{t : R(t) ≥ (n+1)(1−α)/n} with the literal clip rule of Algorithm 1, over every candidate t."""
    n = probs.shape[0]
    target = (n + 1) * (1 - Fraction(repr(alpha)))
    candidates = {-math.inf} | {float(t - p) for t in tau_hat for p in np.unique(probs)}

    def ok(t):
        thr = np.clip(tau_hat - t, 0.0, 1.0)
        return _tpr_sum(probs >= thr[:, None, None], masks) >= target

    feasible = [t for t in sorted(candidates) if ok(t)]
    return feasible[0] if feasible else None


@pytest.mark.parametrize("seed", range(40))
def test_crc_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    probs, masks = _problem(rng, n)
    alpha = float(rng.choice([0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1 / 3]))
    expected = _brute_crc(probs, masks, alpha)
    if expected is None:
        with pytest.warns(ConformalWarning):
            assert crc_threshold(probs, masks, alpha) == 0.0
    else:
        assert crc_threshold(probs, masks, alpha) == expected


@pytest.mark.parametrize("seed", range(40))
def test_adaptive_correction_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 10))
    probs, masks = _problem(rng, n)
    tau_hat = rng.integers(0, GRID + 1, size=n) / GRID
    alpha = float(rng.choice([0.05, 0.1, 0.2, 0.25, 0.5]))
    expected = _brute_correction(probs, masks, tau_hat, alpha)
    if expected is None:
        with pytest.warns(ConformalWarning):
            t = adaptive_correction(probs, masks, tau_hat, alpha)
        assert adaptive_sets(probs, tau_hat, t).all()
    else:
        t = adaptive_correction(probs, masks, tau_hat, alpha)
        assert t == expected
        # The sets from the returned correction reach the level; the next smaller candidate does not.
        level = (n + 1) * (1 - Fraction(repr(alpha)))
        assert _tpr_sum(adaptive_sets(probs, tau_hat, t), masks) >= level


def test_exact_tie_is_decided_in_rational_arithmetic():
    # n = 9, alpha = 0.1: the level (n+1)(1-alpha) = 9 needs every positive pixel; with |Y| = 3 the float
    # sum of 1/3 + 1/3 + 1/3 is 1 - 2^-53 in some orders, which a float comparison would miss.
    rng = np.random.default_rng(0)
    probs = rng.integers(1, GRID, size=(9, 2, 3)) / GRID
    masks = np.zeros((9, 2, 3), dtype=bool)
    masks[:, 0, :] = True
    t = adaptive_correction(probs, masks, np.full(9, 0.5), 0.1)
    assert segmentation_risk(adaptive_sets(probs, np.full(9, 0.5), t), masks).tpr.min() == 1.0
    assert t == _brute_correction(probs, masks, np.full(9, 0.5), 0.1)
    tau = crc_threshold(probs, masks, 0.1)
    assert tau == _brute_crc(probs, masks, 0.1)


def test_crc_is_the_constant_threshold_special_case_of_the_correction():
    rng = np.random.default_rng(3)
    probs, masks = _problem(rng, 30, 5, 5)
    for alpha in (0.1, 0.2):
        tau = crc_threshold(probs, masks, alpha)
        t = adaptive_correction(probs, masks, np.zeros(30), alpha)
        assert -t == tau


def test_crc_large_alpha_allows_the_empty_set():
    probs, masks = _problem(np.random.default_rng(0), 3)
    # With B = 1 the level n + B - (n+1)alpha stays positive for alpha < 1; a smaller bound can reach 0.
    assert crc_threshold(probs, masks, 0.9) < math.inf
    assert crc_threshold(probs, masks, 0.95, loss_bound=0.5) == math.inf
    assert _brute_crc(probs, masks, 0.95, 0.5) == math.inf
    assert not crc_sets(probs, math.inf).any()


def test_oracle_thresholds_are_the_largest_reaching_target():
    rng = np.random.default_rng(5)
    probs = rng.random((20, 8, 8))
    masks = rng.random((20, 8, 8)) < 0.3
    for alpha in (0.1, 0.18, 0.5):
        tau = oracle_thresholds(probs, masks, alpha)
        for i in range(20):
            pos = probs[i][masks[i]]
            tpr = lambda t, pos=pos: (pos >= t).mean()  # noqa: E731
            assert tpr(tau[i]) >= 1 - alpha
            above = pos[pos > tau[i]]
            if above.size:
                assert tpr(above.min()) < 1 - alpha
    # alpha = 0.18 with |Y| = 50: k = ceil(0.82 * 50) = 41 exactly (floats give 41.00000000000001 -> 42)
    p = np.linspace(0.01, 0.99, 100).reshape(1, 10, 10)
    y = np.zeros((1, 10, 10), bool)
    y.flat[:50] = True
    assert oracle_thresholds(p, y, 0.18)[0] == np.sort(p[y])[::-1][40]


def test_per_image_thresholds_clip():
    np.testing.assert_allclose(per_image_thresholds([0.2, 0.9, 0.5], 0.3), [0.0, 0.6, 0.2])


def test_metrics_by_hand():
    sets = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 1]]], dtype=bool)
    masks = np.array([[[1, 0, 1, 0]], [[1, 1, 1, 1]]], dtype=bool)
    risk = segmentation_risk(sets, masks)
    np.testing.assert_allclose(risk.tpr, [0.5, 0.25])
    np.testing.assert_allclose(risk.fpr, [0.5, 0.0])
    np.testing.assert_allclose(risk.set_size, [0.5, 0.25])
    assert marginal_coverage(risk.tpr) == pytest.approx(0.375)
    assert coverage_gap(risk.tpr, 0.1) == pytest.approx((0.4 + 0.65) / 2)
    np.testing.assert_array_equal(nonempty_masks(np.zeros((2, 2, 2))), [False, False])


@pytest.mark.parametrize(
    "probs, masks, message",
    [
        (np.full((2, 3, 3), 0.5), np.zeros((2, 3, 3), bool), "empty mask"),
        (np.full((2, 3, 3), 1.5), np.ones((2, 3, 3), bool), r"\[0, 1\]"),
        (np.full((2, 3, 3), np.nan), np.ones((2, 3, 3), bool), "NaN"),
        (np.full((2, 3, 3), 0.5), np.ones((2, 3, 4), bool), "same shape"),
        (np.full((2, 9), 0.5), np.ones((2, 9), bool), "shape"),
        (np.full((2, 3, 3), 1, dtype=np.int64), np.ones((2, 3, 3), bool), "floating-point"),
        (np.full((2, 3, 3), 0.5), np.full((2, 3, 3), 2), "only 0 and 1"),
    ],
)
def test_invalid_inputs_raise(probs, masks, message):
    with pytest.raises(ValueError, match=message):
        crc_threshold(probs, masks, 0.1)
    with pytest.raises(ValueError, match=message):
        adaptive_correction(probs, masks, np.zeros(probs.shape[0]), 0.1)


def test_invalid_alpha_and_thresholds():
    probs, masks = _problem(np.random.default_rng(0), 4)
    for alpha in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            crc_threshold(probs, masks, alpha)
    with pytest.raises(ValueError, match="one value per image"):
        adaptive_correction(probs, masks, np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        adaptive_correction(probs, masks, np.array([0.1, np.nan, 0.2, 0.3]), 0.1)


@pytest.mark.parametrize("seed", range(30))
def test_bucket_selection_matches_brute_force(seed, monkeypatch):
    """Force the O(N) bucket path (tiny bucket and size limits) on problems brute force can check."""
    from conformood.conformal.risk import control as risk_control

    monkeypatch.setattr(risk_control, "_SMALL", 4)
    monkeypatch.setattr(risk_control, "_BUCKETS", 3)
    _both_calibrations_match_brute_force(np.random.default_rng(500 + seed), [0.1, 0.2, 0.3, 0.5])


def _both_calibrations_match_brute_force(rng, alphas, dtype=np.float64):
    n = int(rng.integers(4, 10))
    probs, masks = _problem(rng, n, 4, 4)
    probs = probs.astype(dtype)
    alpha = float(rng.choice(alphas))
    tau_hat = rng.integers(0, GRID + 1, size=n) / GRID
    expected = _brute_correction(probs, masks, tau_hat, alpha)
    if expected is None:  # no correction reaches the level: a warning and sets that take every pixel
        with pytest.warns(ConformalWarning):
            t = adaptive_correction(probs, masks, tau_hat, alpha)
        assert adaptive_sets(probs, tau_hat, t).all()
    else:
        assert adaptive_correction(probs, masks, tau_hat, alpha) == expected
    expected = _brute_crc(probs, masks, alpha)
    if expected is None:  # no threshold is feasible: a warning and τ = 0 (every pixel)
        with pytest.warns(ConformalWarning):
            assert crc_threshold(probs, masks, alpha) == 0.0
    else:
        assert crc_threshold(probs, masks, alpha) == expected


def test_bucket_path_equals_full_sort_on_large_maps():
    from conformood.conformal.risk.control import (
        _first_reaching,
        _first_reaching_sorted,
    )

    rng = np.random.default_rng(9)
    probs = rng.beta(2, 2, size=(200, 30, 30)).astype(np.float32)
    masks = rng.random((200, 30, 30)) < 0.2
    probs[0, masks[0]] = 1.0  # some p = 1 jumps at -inf
    sizes = masks.reshape(200, -1).sum(1)
    image_of = np.repeat(np.arange(200), sizes)
    tau = rng.uniform(0.2, 0.8, 200)
    jumps = tau[image_of] - probs[masks]
    jumps[probs[masks] >= 1] = -np.inf
    heights = (1.0 / sizes)[image_of]
    for level in (Fraction(1, 3), Fraction(50), Fraction(180), Fraction(1999, 10)):
        assert _first_reaching(jumps, heights, image_of, sizes, level) == _first_reaching_sorted(
            jumps, heights, image_of, sizes, level
        )


# -- the compiled kernel (numba) -----------------------------------------------------------------------------
def _compiled(monkeypatch, buckets):
    from conformood.conformal.risk import control as risk_control

    if not risk_control.compiled_kernel_available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(risk_control, "_FAST_MIN_PIXELS", 0)
    monkeypatch.setattr(risk_control, "_FAST_BUCKETS", buckets)
    return risk_control


@pytest.mark.parametrize("seed", range(30))
def test_compiled_kernel_matches_brute_force(seed, monkeypatch):
    """The compiled two-pass selection, forced onto small problems (few buckets, so the crossing bucket
    holds several jumps and the float-doubt fallbacks are exercised too)."""
    _compiled(monkeypatch, buckets=int(np.random.default_rng(seed).choice([2, 5, 64])))
    _both_calibrations_match_brute_force(np.random.default_rng(900 + seed), [0.1, 0.2, 0.3, 0.5, 1 / 3],
                                         np.float32 if seed % 2 else np.float64)


def test_compiled_kernel_decides_large_problems_itself_and_agrees(monkeypatch):
    rc = _compiled(monkeypatch, buckets=1 << 13)
    rng = np.random.default_rng(4)
    probs = rng.beta(2, 2, size=(300, 24, 20)).astype(np.float32)
    masks = rng.random((300, 24, 20)) < 0.15
    masks[:, 0, 0] = True
    probs[1, masks[1]] = 1.0  # p = 1 pixels are always in the adaptive sets
    tau = rng.uniform(0.2, 0.8, 300)
    sizes = masks.reshape(300, -1).sum(1)
    image_of = np.repeat(np.arange(300), sizes)
    values = probs[masks].astype(np.float64)
    for alpha in (0.05, 0.1, 0.2, 0.37):
        level = (300 + 1) * (1 - Fraction(repr(alpha)))
        fast = rc._fast_first_reaching(probs, masks, tau, True, (tau.min() - 1.0, tau.max()), level)
        assert fast is not rc._FALLBACK  # decided by the kernel, not handed back
        jumps = np.where(values >= 1.0, -np.inf, np.repeat(tau, sizes) - values)
        assert fast == rc._first_reaching_sorted(jumps, np.repeat(1.0 / sizes, sizes), image_of, sizes, level)
        crc_level = 300 + 1 - (300 + 1) * Fraction(repr(alpha))
        fast = rc._fast_first_reaching(probs, masks, np.zeros(300), False, (-1.0, 0.0), crc_level)
        assert fast is not rc._FALLBACK
        assert fast == rc._first_reaching_sorted(-values, np.repeat(1.0 / sizes, sizes), image_of, sizes, crc_level)
        monkeypatch.setattr(rc, "USE_COMPILED_KERNEL", False)
        numpy_t, numpy_crc = adaptive_correction(probs, masks, tau, alpha), crc_threshold(probs, masks, alpha)
        monkeypatch.setattr(rc, "USE_COMPILED_KERNEL", True)
        assert adaptive_correction(probs, masks, tau, alpha) == numpy_t
        assert crc_threshold(probs, masks, alpha) == numpy_crc


@pytest.mark.parametrize(
    "probs, masks, message",
    [
        (np.full((2, 3, 3), 0.5), np.zeros((2, 3, 3), bool), "empty mask"),
        (np.full((2, 3, 3), 1.5), np.ones((2, 3, 3), bool), r"\[0, 1\]"),
        (np.full((2, 3, 3), np.nan), np.ones((2, 3, 3), bool), "NaN"),
        (np.full((2, 3, 3), -0.0001), np.ones((2, 3, 3), bool), r"\[0, 1\]"),
    ],
)
def test_compiled_kernel_hands_invalid_inputs_to_the_checks(probs, masks, message, monkeypatch):
    _compiled(monkeypatch, buckets=16)
    with pytest.raises(ValueError, match=message):
        crc_threshold(probs, masks, 0.1)
    with pytest.raises(ValueError, match=message):
        adaptive_correction(probs, masks, np.zeros(probs.shape[0]), 0.1)
