import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from conformood.conformal import (
    ConformalWarning,
    conformal_p_values,
    conformal_rank,
    conformal_threshold,
)


def brute_p_values(cal, test):
    return np.array([(1 + np.sum(cal <= s)) / (len(cal) + 1) for s in test])


def test_p_values_match_definition():
    rng = np.random.default_rng(0)
    cal = rng.normal(size=57)
    test = np.r_[rng.normal(size=40), cal[:5]]  # exact ties with calibration scores
    np.testing.assert_allclose(conformal_p_values(cal, test), brute_p_values(cal, test))


def test_p_values_with_tied_calibration_scores():
    cal = np.array([1.0, 1.0, 1.0, 2.0])
    np.testing.assert_allclose(conformal_p_values(cal, [0.0, 1.0, 1.5, 2.0, 3.0]), [0.2, 0.8, 0.8, 1.0, 1.0])


@pytest.mark.parametrize(
    ("alpha", "n", "k"),
    [(0.29, 99, 29), (0.1, 99, 10), (0.1, 9, 1), (0.05, 18, 0), (0.18, 149, 27), (0.3, 9, 3), (0.7, 9, 7)],
)
def test_rank_is_exact(alpha, n, k):
    assert conformal_rank(alpha, n) == k


def test_rank_float_rounding_case():
    # the naive float computation is off by one here; the exact rank is not
    assert math.floor(0.29 * 100) == 28
    assert conformal_rank(0.29, 99) == 29
    assert conformal_threshold(np.arange(1.0, 100.0), 0.29) == 29.0


def test_threshold_is_kth_smallest():
    rng = np.random.default_rng(1)
    cal = rng.permutation(np.arange(200.0))
    for alpha in (0.01, 0.05, 0.1, 0.33):
        k = conformal_rank(alpha, 200)
        assert conformal_threshold(cal, alpha) == np.sort(cal)[k - 1]


def test_threshold_below_reachable_level_warns_and_flags_nothing():
    cal = np.arange(10.0)
    with pytest.warns(ConformalWarning, match="below 1/\\(n\\+1\\)"):
        t = conformal_threshold(cal, 0.05)
    assert t == -np.inf
    assert not np.any(np.array([-1e300, 0.0, 5.0]) < t)


@settings(max_examples=200, deadline=None)
@given(
    cal=st.lists(st.integers(-5, 5), min_size=1, max_size=40),
    test=st.lists(st.integers(-6, 6), min_size=1, max_size=20),
    alpha=st.floats(0.01, 0.99),
)
def test_threshold_rule_equals_p_value_rule(cal, test, alpha):
    """Flagging s(x) < t is the same decision as p(x) <= alpha, ties included."""
    cal = np.asarray(cal, dtype=float)
    test = np.asarray(test, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConformalWarning)
        t = conformal_threshold(cal, alpha)
    k = conformal_rank(alpha, len(cal))
    p = conformal_p_values(cal, test)
    # p <= alpha  <=>  (n+1) p <= k, decided in integers to avoid float error at the boundary
    by_p = np.rint(p * (len(cal) + 1)).astype(int) <= k
    np.testing.assert_array_equal(test < t, by_p)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.1"])
def test_alpha_outside_unit_interval_raises(alpha):
    with pytest.raises(ValueError, match="alpha"):
        conformal_threshold(np.arange(10.0), alpha)


@pytest.mark.parametrize(
    ("cal", "match"),
    [
        (np.array([]), "empty"),
        (np.array([1.0, np.nan]), "NaN or infinite"),
        (np.array([1.0, np.inf]), "NaN or infinite"),
        (np.ones((3, 2)), "1-D"),
        (np.array(["a", "b"]), "numeric"),
    ],
)
def test_bad_calibration_scores_raise(cal, match):
    with pytest.raises(ValueError, match=match):
        conformal_threshold(cal, 0.1)
    with pytest.raises(ValueError, match=match):
        conformal_p_values(cal, [0.0])


def test_bad_test_scores_raise():
    with pytest.raises(ValueError, match="test_scores.*NaN"):
        conformal_p_values([1.0, 2.0], [np.nan])
    with pytest.raises(ValueError, match="test_scores is empty"):
        conformal_p_values([1.0, 2.0], [])


def test_false_alarm_rate_controlled_over_random_splits():
    """Realised FPR on inliers <= alpha on average over 400 random calibration/test splits.

    Each split draws n = 99 calibration and m = 500 test inlier scores. The expected FPR is exactly
    k/(n+1) <= alpha; the mean over 400 splits has standard error below 0.0035 for alpha <= 0.2, so a
    tolerance of 0.012 (> 3.4 standard errors) makes a false failure rarer than 1 in 3000.
    """
    rng = np.random.default_rng(12345)
    n, m, reps = 99, 500, 400
    pool = rng.standard_t(df=3, size=200_000)  # heavy-tailed scores: the guarantee is distribution-free
    for alpha in (0.05, 0.1, 0.2):
        rates = []
        for _ in range(reps):
            idx = rng.choice(pool.size, size=n + m, replace=False)
            cal, test = pool[idx[:n]], pool[idx[n:]]
            rates.append(np.mean(test < conformal_threshold(cal, alpha)))
        mean = float(np.mean(rates))
        assert mean <= alpha + 0.012, (alpha, mean)
        # and the rule is not trivially conservative: it reaches k/(n+1)
        assert mean >= conformal_rank(alpha, n) / (n + 1) - 0.012, (alpha, mean)


def test_inlier_p_values_are_uniform():
    """Inlier p-values from many splits are uniform on {1/(n+1), ..., 1}: KS test against U(0, 1).

    With n = 999 the discrete law is within 1/(n+1) of U(0,1); 4,000 p-values (one per split) give a KS
    statistic whose null 1 % quantile (about 0.026) is far above that discretisation.
    """
    rng = np.random.default_rng(7)
    n = 999
    ps = []
    for _ in range(4000):
        scores = rng.exponential(size=n + 1)
        ps.append(conformal_p_values(scores[:n], scores[n:])[0])
    ps = np.asarray(ps)
    assert stats.kstest(ps, "uniform").pvalue > 0.001
    # p-values of clear outliers are not uniform: the same test must reject them
    out = conformal_p_values(rng.exponential(size=n), rng.exponential(size=4000) * 0.05)
    assert stats.kstest(out, "uniform").pvalue < 1e-6
