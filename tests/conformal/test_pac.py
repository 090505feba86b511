"""Calibration-conditional guarantees (PAC thresholds, conditional p-values and BH), checked over many
calibration draws. Scores are continuous and uniform on (0, 1) for inliers, so the false-alarm rate of a
threshold t (flag s < t) is exactly t: no test-set noise enters the check."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from conformood.conformal import (
    ConformalDetector,
    ConformalWarning,
    benjamini_hochberg,
    conditional_bounds,
    conformal_rank,
    pac_failure_probability,
    pac_min_calibration,
    pac_rank,
)
from conformood.scores import L2NormDetector

DRAWS = 2000


def _exceedance(n, alpha, delta, rank_rule, seed):
    """Fraction of calibration draws whose deployed threshold has FPR > alpha."""
    rng = np.random.default_rng(seed)
    cal = np.sort(rng.uniform(size=(DRAWS, n)), axis=1)
    k = rank_rule(alpha, delta, n)
    fpr = cal[:, k - 1] if k else np.zeros(DRAWS)
    return float((fpr > alpha).mean())


@pytest.mark.parametrize("n", [50, 200, 1000])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
@pytest.mark.parametrize("delta", [0.05, 0.1])
def test_pac_threshold_fails_at_most_delta_of_calibration_draws(n, alpha, delta):
    """Tolerance: 3 standard errors of a proportion delta over 2,000 draws."""
    observed = _exceedance(n, alpha, delta, pac_rank, seed=n * 1000 + int(alpha * 100) + int(delta * 1000))
    se = np.sqrt(delta * (1 - delta) / DRAWS)
    assert observed <= delta + 3 * se, observed
    # the rank is the largest valid one: one more and the failure probability exceeds delta
    k = pac_rank(alpha, delta, n)
    assert pac_failure_probability(k, n, alpha) <= delta
    if k < n:
        assert pac_failure_probability(k + 1, n, alpha) > delta


def test_the_marginal_threshold_fails_that_check():
    """The same check fails on a deliberately broken version (the marginal rank used as if it were PAC)."""
    observed = _exceedance(1000, 0.1, 0.05, lambda a, d, n: conformal_rank(a, n), seed=1)
    assert observed > 0.05 + 3 * np.sqrt(0.05 * 0.95 / DRAWS)


def test_pac_rank_matches_the_beta_order_statistic_and_the_minimum_n():
    for n, alpha, delta in [(100, 0.1, 0.1), (500, 0.05, 0.05), (37, 0.2, 0.01)]:
        k = pac_rank(alpha, delta, n)
        assert stats.beta.sf(alpha, k, n + 1 - k) <= delta + 1e-12 if k else True
    n_min = pac_min_calibration(0.1, 0.1)
    assert pac_rank(0.1, 0.1, n_min) == 1 and pac_rank(0.1, 0.1, n_min - 1) == 0
    assert n_min == 22  # (0.9)^22 = 0.098 <= 0.1 < 0.9^21


def test_conformal_detector_with_delta_flags_by_the_pac_rank_and_warns_when_n_is_too_small():
    rng = np.random.default_rng(0)
    cal, test = rng.normal(size=(200, 3)), rng.normal(size=(5000, 3))
    cd = ConformalDetector(L2NormDetector()).fit(cal).calibrate(cal, delta=0.1)
    scores = cd.detector.score_samples(test)
    assert np.array_equal(cd.predict(test, 0.1), scores < cd.threshold(0.1))
    marginal = ConformalDetector(L2NormDetector()).fit(cal).calibrate(cal)
    assert cd.threshold(0.1) < marginal.threshold(0.1)  # the price: a lower threshold, fewer flags
    small = ConformalDetector(L2NormDetector()).fit(cal).calibrate(cal[:15], delta=0.1)
    with pytest.warns(ConformalWarning, match="at least 22"):
        assert not small.predict(test, 0.1).any()


def test_conditional_bounds_hold_simultaneously_with_probability_1_minus_delta():
    rng = np.random.default_rng(3)
    for method in ("simes", "dkwm"):
        for n, delta in [(100, 0.1), (400, 0.05)]:
            b = conditional_bounds(n, delta, method)[:n]
            u = np.sort(rng.uniform(size=(4000, n)), axis=1)
            covered = (u <= b).all(axis=1).mean()
            assert covered >= 1 - delta - 3 * np.sqrt(delta * (1 - delta) / 4000), (method, n, covered)


def _conditional_fdr(cal, n_batches, rng, conditional, q=0.1, delta=0.1):
    """FDR of BH given one calibration set, estimated over test batches of 95 inliers and 5 clear outliers, with
    its standard error."""
    n = cal.size
    scores = np.concatenate([rng.uniform(size=(n_batches, 95)), rng.uniform(0, 0.002, size=(n_batches, 5))], axis=1)
    ranks = 1 + np.searchsorted(np.sort(cal), scores, side="right")
    p = conditional_bounds(n, delta, "simes")[ranks - 1] if conditional else ranks / (n + 1)
    fdp, discoveries = np.empty(n_batches), np.empty(n_batches)
    for b in range(n_batches):
        rejected = benjamini_hochberg(p[b], q)
        discoveries[b] = rejected.sum()
        fdp[b] = rejected[:95].sum() / max(1, discoveries[b])
    return fdp.mean(), fdp.std() / np.sqrt(n_batches), discoveries.mean()


def test_conditional_bh_controls_fdr_given_the_calibration_set():
    """Over 500 calibration draws (n = 1000) with 200 test batches each, BH on calibration-conditional
    (generalized Simes) p-values keeps the conditional FDR <= q = 0.1 for >= 1 - delta = 90 % of the draws.
    Tolerance: a draw counts as failing when its FDR estimate exceeds q by more than 2 of its standard errors; the
    fraction of failing draws must be <= delta + 3 SE (0.140). BH on the marginal p-values of the same draws and
    batches fails the same check (about 25 % of draws fail)."""
    rng = np.random.default_rng(0)
    conditional, marginal = [], []
    for _ in range(500):
        cal = rng.uniform(size=1000)
        state = rng.bit_generator.state
        conditional.append(_conditional_fdr(cal, 200, rng, conditional=True))
        rng.bit_generator.state = state  # the same test batches for both
        marginal.append(_conditional_fdr(cal, 200, rng, conditional=False))
    conditional, marginal = np.array(conditional), np.array(marginal)
    bound = 0.1 + 3 * np.sqrt(0.1 * 0.9 / 500)
    assert (conditional[:, 0] > 0.1 + 2 * conditional[:, 1]).mean() <= bound
    assert conditional[:, 2].mean() > 1.0  # BH still discovers: the guarantee is not bought by never selecting
    assert (marginal[:, 0] > 0.1 + 2 * marginal[:, 1]).mean() > bound


def test_evaluate_delta_reports_both_rules_and_saves_the_pac_detector(tmp_path):
    import json

    from conformood.cli import main

    rng = np.random.default_rng(3)
    np.savez(tmp_path / "train.npz", features=rng.normal(size=(300, 5)))
    np.savez(tmp_path / "cal.npz", features=rng.normal(size=(400, 5)))
    test = np.concatenate([rng.normal(size=(2000, 5)), rng.normal(size=(500, 5)) + 2.0])
    np.savez(tmp_path / "test.npz", features=test, is_inlier=np.arange(2500) < 2000)
    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--train", str(tmp_path / "train.npz"), "--calibration", str(tmp_path / "cal.npz"),
              "--test", str(tmp_path / "test.npz"), "--detector", "l2_norm", "--alpha", "0.1", "--delta", "0.05",
              "--out", str(out)])
    assert exit_info.value.code == 0
    r = json.loads((out / "evaluation.json").read_text())
    pac, marginal = r["pac"]["pac"], r["pac"]["marginal"]
    assert r["config"]["delta"] == 0.05 and r["pac"]["min_calibration"] == pac_min_calibration(0.1, 0.05)
    k_pac, k_marg = pac["groups"]["-1"]["rank"], marginal["groups"]["-1"]["rank"]
    assert k_pac == pac_rank(0.1, 0.05, 400) < k_marg == conformal_rank(0.1, 400)
    assert pac["groups"]["-1"]["p_fpr_above_alpha"] <= 0.05 < marginal["groups"]["-1"]["p_fpr_above_alpha"]
    assert pac["realised_fpr"] <= marginal["realised_fpr"] and pac["ood_flagged"] <= marginal["ood_flagged"]
    assert r["realised_fpr_at_alpha"] == pac["realised_fpr"]  # the decisions are the PAC rule's
    saved = ConformalDetector.load(out / "detector.safetensors")
    assert saved.delta_ == 0.05 and saved.threshold(0.1) == pac["groups"]["-1"]["threshold"]
    assert "P_cal(FPR > α)" in (out / "evaluation.md").read_text()
