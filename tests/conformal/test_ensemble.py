"""ConformalEnsemble: the combination's false-alarm guarantee over many calibration draws, its p-values against a
brute-force computation, and a case where the combination beats every member."""

from __future__ import annotations

import numpy as np
import pytest

from conformood.conformal import ConformalDetector, ConformalEnsemble, compare_with_members
from conformood.conformal.detection.ensemble import CombinedScore
from conformood.scores import EnergyDetector, KNNCosineDetector, L2NormDetector, MahalanobisDetector


@pytest.fixture(scope="module")
def detectors():
    train = np.random.default_rng(0).normal(size=(1000, 8))
    return [MahalanobisDetector().fit(train, np.zeros(1000, dtype=int)), KNNCosineDetector().fit(train),
            L2NormDetector().fit(train)]


def _fpr_over_draws(detectors, rule, draws, broken=False, alpha=0.1, tail=False):
    rng = np.random.default_rng(1)
    fpr = np.empty(draws)
    for i in range(draws):
        cal, test = rng.normal(size=(200, 8)), rng.normal(size=(1000, 8))
        if broken:  # the reference scores and the calibration scores from the same points
            combined = CombinedScore(detectors, rule, [d.score_samples(cal) for d in detectors])
            fpr[i] = ConformalDetector(combined).calibrate(cal).predict(test, alpha).mean()
        else:
            fpr[i] = ConformalEnsemble(detectors, rule=rule, seed=i, tail=tail).calibrate(cal).predict(
                test, alpha).mean()
    return fpr.mean(), fpr.std() / np.sqrt(draws)


@pytest.mark.parametrize("rule", ["min_p", "mean_rank", "fisher"])
def test_the_combination_keeps_the_false_alarm_rate_over_500_calibration_draws(detectors, rule):
    """Mean realised FPR at α = 0.1 over 500 draws of 200 calibration and 1,000 test inliers is <= α + 3 SE
    (SE: the standard error of that mean over the draws)."""
    mean, se = _fpr_over_draws(detectors, rule, 500)
    assert mean <= 0.1 + 3 * se
    assert mean >= 0.06  # not bought by flagging nothing


def test_the_continuous_tail_keeps_the_guarantee_and_orders_what_the_floor_tied(detectors):
    """``tail=True``: the same guarantee over 300 draws (mean FPR <= α + 3 SE); member p-values equal the
    conformal ones from the lowest reference up, and below it fall strictly with the score, under the floor."""
    from conformood.conformal import conformal_p_values
    from conformood.conformal.detection.ensemble import tail_p_values

    mean, se = _fpr_over_draws(detectors, "min_p", 300, tail=True)
    assert 0.06 <= mean <= 0.1 + 3 * se
    refs = np.sort(np.random.default_rng(3).normal(size=50))
    s = np.r_[np.linspace(refs[0] - 5, refs[0] - 1e-3, 20), refs, refs + 1e-3]
    q, plain = tail_p_values(refs, s), conformal_p_values(refs, s)
    below = s < refs[0]
    assert np.array_equal(q[~below], plain[~below])
    assert np.all(np.diff(q[below]) > 0) and np.all(q[below] < 1 / 51) and np.all(q[below] > 0)
    assert np.all(plain[below] == 1 / 51)  # what the floor made equal
    far = np.random.default_rng(4).normal(size=(40, 8)) * 6  # far beyond every reference on every member
    ens = ConformalEnsemble(detectors, rule="min_p", tail=True).calibrate(np.random.default_rng(5).normal(size=(200, 8)))
    assert np.unique(ens.score_samples(far)).size == 40  # no ties among them
    assert ens.min_p_value() == 1 / (ens.n_calibration_ + 1)


def test_calibrating_on_the_reference_points_breaks_the_guarantee(detectors):
    """The deliberately broken version (no split: each detector's scale set on the points that then calibrate
    the combination) exceeds α by more than 3 SE with Fisher's rule (about 0.112)."""
    mean, se = _fpr_over_draws(detectors, "fisher", 500, broken=True)
    assert mean > 0.1 + 3 * se


def test_p_values_match_a_brute_force_computation(detectors):
    rng = np.random.default_rng(2)
    cal, test = rng.normal(size=(41, 8)), rng.normal(size=(7, 8)) * 1.5
    ens = ConformalEnsemble(detectors, rule="fisher", reference_fraction=0.4, seed=3).calibrate(cal)
    order = np.random.default_rng(3).permutation(41)
    ref, rest = np.sort(order[:16]), np.sort(order[16:])

    def statistic(x):
        t = 0.0
        for d in detectors:
            r, s = d.score_samples(cal[ref]), d.score_samples(x[None])[0]
            t += np.log((1 + sum(v <= s for v in r)) / (len(r) + 1))
        return t

    t_cal = [statistic(cal[i]) for i in rest]
    expected = [(1 + sum(v <= statistic(x) for v in t_cal)) / (len(t_cal) + 1) for x in test]
    assert np.allclose(ens.p_values(test), expected)
    assert ens.n_reference_ == 16 and ens.n_calibration_ == 25


def test_the_combination_sees_what_each_member_misses():
    """Two kinds of outliers: far from the centre in norm (seen by s_l2 only) and on an unusual direction at a
    usual norm (seen by cosine kNN). The Fisher combination ranks both, and beats each member's AUROC."""
    rng = np.random.default_rng(4)

    def inliers(n):
        x = rng.normal(size=(n, 4)) * 0.2 + np.array([3.0, 0, 0, 0])  # a cluster along e1 at norm 3
        return x

    train, cal = inliers(1000), inliers(400)
    far = inliers(300) * 2.0  # same direction, double norm
    turned = inliers(300)[:, [1, 0, 2, 3]]  # the same norms on another direction
    test = np.concatenate([inliers(600), far, turned])
    is_inlier = np.arange(test.shape[0]) < 600
    members = [L2NormDetector().fit(train), KNNCosineDetector().fit(train)]
    # s_l2 scores large norms as normal; to see 'far' as abnormal it needs the distance to the usual norm
    members[0] = _NormDistance(np.linalg.norm(train, axis=1).mean())
    ens = ConformalEnsemble(members, rule="fisher").calibrate(cal)
    rows = compare_with_members(ens, cal, test, is_inlier, alpha=0.1)
    best_single = max(rows["detector_0"]["auroc"], rows["detector_1"]["auroc"])
    assert rows["ensemble"]["auroc"] > best_single + 0.1
    assert all(r["fpr"] <= 0.15 for r in rows.values())


class _NormDistance:
    """A user's own detector: any object with score_samples works (minus the distance to a typical norm)."""

    def __init__(self, norm):
        self.norm = norm

    def score_samples(self, x):
        return -np.abs(np.linalg.norm(x, axis=1) - self.norm)


def test_per_detector_inputs_and_refusals(detectors):
    rng = np.random.default_rng(5)
    feats, logits = rng.normal(size=(50, 8)), rng.normal(size=(50, 3))
    ens = ConformalEnsemble([detectors[0], EnergyDetector().fit(logits)], rule="min_p").calibrate([feats, logits])
    assert ens.p_values([feats[:5], logits[:5]]).shape == (5,)
    assert ens.member_p_values([feats[:5], logits[:5]]).shape == (5, 2)
    with pytest.raises(ValueError, match="2 detectors"):
        ens.p_values([feats, feats, logits])
    with pytest.raises(ValueError, match="different numbers of rows"):
        ens.p_values([feats[:4], logits[:5]])
    with pytest.raises(ValueError, match="rule"):
        ConformalEnsemble(detectors, rule="max")
    with pytest.raises(ValueError, match="non-empty"):
        ConformalEnsemble([])
    with pytest.raises(TypeError, match="score_samples"):
        ConformalEnsemble([object()])
    with pytest.raises(ValueError, match="not calibrated"):
        ConformalEnsemble(detectors).predict(feats, 0.1)
    with pytest.raises(ValueError, match="at least 2"):
        ConformalEnsemble(detectors).calibrate(feats[:1])
    with pytest.raises(ValueError, match="reference_fraction"):
        ConformalEnsemble(detectors, reference_fraction=1.0)
