"""Contrastive conformal sets: closed-form volumes vs Monte Carlo, membership vs score, Lemma 1 coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conformood.conformal import ConformalWarning
from conformood.conformal.sets.base import conformal_quantile
from conformood.conformal.sets.families import (
    ConformalBall,
    GeneralizedMultiNormSet,
    MahalanobisEllipsoid,
    SingleNormSet,
)
from conformood.conformal.sets.sampling import TripletSampler, evaluate_set, pair_samples
from conformood.conformal.sets.training import set_objective, train_conformal_set
from conformood.data.simulation import ccs_mixed_clusters


def _random_set(family: str, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    if family == "ball":
        return ConformalBall(d)
    if family == "ellipsoid":
        s = MahalanobisEllipsoid(d)
        a = torch.randn(d, d, generator=g, dtype=torch.float64)
        s.set_covariance(a @ a.T + 0.3 * torch.eye(d, dtype=torch.float64))
        return s
    if family == "single":
        s = SingleNormSet(d)
        with torch.no_grad():
            s.A.copy_(torch.eye(d) + 0.4 * torch.randn(d, d, generator=g))
            s.p_raw.fill_(float(torch.empty(()).uniform_(0.7, 4.0, generator=g)))
        return s
    s = GeneralizedMultiNormSet(d)
    with torch.no_grad():
        s.m_raw.copy_(torch.empty(d).uniform_(0.5, 2.0, generator=g))
        s.p_raw.copy_(torch.empty(d).uniform_(0.7, 4.0, generator=g))
    return s


@pytest.mark.parametrize("family", ["ball", "ellipsoid", "single", "generalized"])
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_log_volume_matches_monte_carlo(family, d, seed):
    s = _random_set(family, d, seed)
    s.threshold_ = 1.3
    rng = np.random.default_rng(seed)
    # Bounding box from the set's extent along the axes, found by probing outwards.
    anchor = np.zeros((1, d))
    half = 0.5
    while True:
        probe = rng.uniform(-half, half, size=(20000, d))
        inside = s.contains(probe, np.repeat(anchor, probe.shape[0], axis=0))
        on_edge = np.abs(probe).max(axis=1) > 0.98 * half
        if not (inside & on_edge).any():
            break
        half *= 1.5
    n = 400_000
    pts = rng.uniform(-half, half, size=(n, d))
    frac = s.contains(pts, np.zeros((n, d))).mean()
    assert frac > 0.01
    mc = math.log(frac) + d * math.log(2 * half)
    se = math.sqrt((1 - frac) / (frac * n))  # relative standard error of the fraction
    assert abs(s.log_volume() - mc) < 5 * se + 1e-3, (family, s.log_volume(), mc)


@pytest.mark.parametrize("family", ["ball", "ellipsoid", "single", "generalized"])
def test_membership_agrees_with_score(family):
    s = _random_set(family, 4, 3)
    rng = np.random.default_rng(0)
    a, p = rng.normal(size=(500, 4)), rng.normal(size=(500, 4))
    s.threshold_ = float(np.median(s.nonconformity(p, a)))
    np.testing.assert_array_equal(s.contains(p, a), s.nonconformity(p, a) <= s.threshold_)
    # The score is a distance to the anchor: zero at the anchor, symmetric in its arguments.
    np.testing.assert_allclose(s.nonconformity(a, a), 0.0, atol=1e-5)
    np.testing.assert_allclose(s.nonconformity(p, a), s.nonconformity(a, p), rtol=1e-5)


def test_log_volume_is_finite_in_high_dimension():
    for s in (ConformalBall(2048), SingleNormSet(512), GeneralizedMultiNormSet(4096)):
        s.threshold_ = 3.0
        assert math.isfinite(s.log_volume())
    e = MahalanobisEllipsoid(1024)
    e.set_covariance(torch.eye(1024, dtype=torch.float64) * 0.01)
    e.threshold_ = 3.0
    assert math.isfinite(e.log_volume())


def test_conformal_quantile_integer_rank():
    # alpha = 0.05, n = 19: k = ceil(0.95 * 20) = 19 exactly (floats: 19.000000000000004 -> 20)
    assert conformal_quantile(np.arange(1.0, 20.0), 0.05) == 19.0
    assert conformal_quantile(np.arange(1.0, 100.0), 0.1) == 90.0
    with pytest.warns(ConformalWarning):
        assert conformal_quantile(np.arange(1.0, 10.0), 0.05) == math.inf


@pytest.mark.parametrize("family", ["ball", "ellipsoid", "single", "generalized"])
def test_coverage_guarantee_over_random_splits(family):
    """Lemma 1: mean test coverage ≥ 1 − α over 250 random calibration/test splits (3 standard errors)."""
    x, y = ccs_mixed_clusters(n_per_class=400, seed=5)
    s = _random_set(family, 3, 7)
    alpha, n_cal = 0.1, 200
    s.alpha = alpha
    a_all, p_all, _ = pair_samples(y, 1, seed=0)
    scores = s.nonconformity(x[p_all], x[a_all])
    rng = np.random.default_rng(1)
    covs, n_q = [], []
    for _ in range(250):
        order = rng.permutation(x.shape[0])
        cal, test = order[:n_cal], order[n_cal:]
        if family == "ellipsoid":
            s.calibrate(x[a_all[cal]], x[p_all[cal]])
            n_q.append(s.n_calibration_)
            covs.append(s.contains(x[p_all[test]], x[a_all[test]]).mean())
        else:
            q = conformal_quantile(scores[cal], alpha)
            covs.append((scores[test] <= q).mean())
    covs = np.asarray(covs)
    se = covs.std(ddof=1) / math.sqrt(covs.size)
    n_eff = min(n_q) if family == "ellipsoid" else n_cal
    assert covs.mean() >= 1 - alpha - 3 * se
    assert covs.mean() <= 1 - alpha + 1 / (n_eff + 1) + 3 * se


@pytest.mark.parametrize("family", ["single", "generalized"])
@pytest.mark.parametrize("objective", ["neg", "vol", "neg+vol"])
@pytest.mark.parametrize("detach", [False, True])
def test_objective_gradients_are_finite(family, objective, detach):
    s = _random_set(family, 3, 1)
    x, y = ccs_mixed_clusters(n_per_class=200, seed=0)
    sampler = TripletSampler(labels=y)
    g = torch.Generator().manual_seed(0)
    anchors = torch.arange(64)
    pos, neg = sampler.sample(anchors, 20, g)
    xt = torch.tensor(x, dtype=torch.float32)
    loss, _ = set_objective(s, xt[anchors], xt[pos], xt[neg], objective, 0.05, 7.0, 0.05, detach_quantile=detach)
    loss.backward()
    grads = [p.grad for p in s.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)


def test_sampler_draws_without_replacement_and_respects_classes():
    y = np.repeat(np.arange(3), 50)
    sampler = TripletSampler(labels=y)
    g = torch.Generator().manual_seed(0)
    anchors = torch.arange(150)
    pos, neg = sampler.sample(anchors, 30, g)
    yt = torch.as_tensor(y)
    assert (yt[pos] == yt[anchors][:, None]).all()
    assert (yt[neg] != yt[anchors][:, None]).all()
    assert not (pos == anchors[:, None]).any()
    for row in range(150):
        assert len(set(pos[row].tolist())) == 30 and len(set(neg[row].tolist())) == 30


def test_training_improves_exclusion_over_the_ball():
    x, y = ccs_mixed_clusters(n_per_class=600, seed=1)
    tr, ca, te = np.split(np.random.default_rng(0).permutation(x.shape[0]), [1800, 2400])
    ball = ConformalBall(3)
    learned = SingleNormSet(3)
    result = train_conformal_set(learned, x[tr], y[tr], objective="neg", pairs_per_anchor=50, epochs=6, seed=0)
    assert 0 <= result.best_epoch < 6
    out = {}
    for name, s in (("ball", ball), ("learned", learned)):
        a, p, _ = pair_samples(y[ca], 1, seed=1)
        s.calibrate(x[ca][a], x[ca][p])
        out[name] = evaluate_set(s, x[te], y[te], pairs_per_anchor=20, seed=2)
    assert out["learned"]["exclusion"] > out["ball"]["exclusion"] + 0.03
    assert abs(out["learned"]["coverage"] - 0.95) < 0.03


def test_invalid_inputs():
    s = ConformalBall(3)
    with pytest.raises(ValueError, match="pair up"):
        s.calibrate(np.zeros((5, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="dimensions|features"):
        s.calibrate(np.zeros((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="NaN"):
        s.calibrate(np.full((5, 3), np.nan), np.zeros((5, 3)))
    with pytest.raises(RuntimeError, match="not calibrated"):
        ConformalBall(3).contains(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="alpha"):
        SingleNormSet(3, alpha=1.5)
    with pytest.raises(ValueError, match="calibration pairs"):
        MahalanobisEllipsoid(3).calibrate(np.zeros((5, 3)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="no parameters"):
        train_conformal_set(ConformalBall(3), np.zeros((10, 3)), np.zeros(10))
    with pytest.raises(ValueError, match="objective"):
        train_conformal_set(SingleNormSet(3), np.zeros((10, 3)), np.zeros(10), objective="both")


def test_conformal_set_detector_separates_far_and_between_cluster_points():
    from conformood.conformal import ConformalSetDetector
    from conformood.metrics import auroc

    x, y = ccs_mixed_clusters(n_per_class=500, seed=2)
    ref, cal, test = np.split(np.random.default_rng(0).permutation(x.shape[0]), [1500, 2000])
    s = ConformalBall(3, alpha=0.05)
    a, p, _ = pair_samples(y[cal], 1, seed=0)
    s.calibrate(x[cal][a], x[cal][p])
    rng = np.random.default_rng(1)
    far = rng.uniform(-15, 15, size=(300, 3))
    far = far[np.linalg.norm(far, axis=1) > 10][:150]
    for variant in ("neg", "neg-pos"):
        det = ConformalSetDetector(s, n_samples=20, variant=variant).fit(x[ref], y[ref])
        s_in = det.score_samples(x[test])
        s_far = det.score_samples(far)
        assert np.all((s_in >= -1) & (s_in <= 1))
        is_in = np.r_[np.ones(s_in.size, bool), np.zeros(s_far.size, bool)]
        value = auroc(np.r_[s_in, s_far], is_in)
        if variant == "neg-pos":
            assert value > 0.8
        else:
            assert value < 0.5  # far points exclude every negative: eq. 23 alone calls them in-distribution
    with pytest.raises(ValueError, match="calibrated"):
        ConformalSetDetector(ConformalBall(3)).fit(x[ref], y[ref])


def test_joint_infonce_training_alternates_set_and_encoder():
    """eq. 22: set parameters and the encoder's layer are updated in alternate epochs."""
    torch.manual_seed(0)
    x, y = ccs_mixed_clusters(n_per_class=150, seed=3)
    features = np.concatenate([x, np.random.default_rng(0).normal(size=(x.shape[0], 2))], axis=1)
    encoder = torch.nn.Linear(5, 3)
    before = encoder.weight.detach().clone()
    s = SingleNormSet(3)
    result = train_conformal_set(
        s, features, y, objective="neg+vol", pairs_per_anchor=10, epochs=4, encoder=encoder, seed=0
    )
    assert [h["trained"] for h in result.history] == ["set", "encoder", "set", "encoder"]
    assert not torch.equal(before, encoder.weight.detach()) or result.best_epoch == 0
    with torch.no_grad():
        z = encoder(torch.tensor(features, dtype=torch.float32)).numpy()
    a, p, _ = pair_samples(y, 1, seed=1)
    s.calibrate(z[a], z[p])
    assert 0.9 < s.contains(z[p], z[a]).mean() <= 1.0


def test_unsupervised_views_training_runs_and_keeps_coverage():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 3)) * 3
    views = base[:, None, :] + 0.3 * rng.normal(size=(300, 8, 3))
    s = GeneralizedMultiNormSet(3, alpha=0.1)
    result = train_conformal_set(s, views[:, 0], views=views, objective="neg", pairs_per_anchor=5, epochs=3, seed=0)
    assert len(result.history) == 3 and result.best_exclusion > 0.5
    with pytest.raises(ValueError, match="views"):
        train_conformal_set(GeneralizedMultiNormSet(3), views[:, 0], views=views[:10], pairs_per_anchor=5)


@pytest.mark.parametrize("family", ["ball", "ellipsoid", "single", "generalized"])
def test_save_and_load_round_trip(family, tmp_path):
    from conformood.conformal.sets.families import load_conformal_set

    s = _random_set(family, 3, 4)
    rng = np.random.default_rng(0)
    a, p = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    s.calibrate(a, p)
    s.save(tmp_path / "set.safetensors")
    back = load_conformal_set(tmp_path / "set.safetensors")
    assert type(back) is type(s) and back.threshold_ == s.threshold_
    np.testing.assert_array_equal(back.contains(p, a), s.contains(p, a))
    assert back.log_volume() == pytest.approx(s.log_volume())


def test_fit_interface_trains_learned_sets_only():
    x, y = ccs_mixed_clusters(n_per_class=100, seed=0)
    ball = ConformalBall(3).fit(x, y)
    assert not hasattr(ball, "training_")
    single = SingleNormSet(3).fit(x, y, pairs_per_anchor=10, epochs=2)
    assert len(single.training_.history) == 2


def test_conformal_set_detector_is_registered_and_round_trips(tmp_path):
    from conformood.conformal import ConformalSetDetector, load_detector
    from conformood.scores import detector_info

    x, y = ccs_mixed_clusters(n_per_class=150, seed=3)
    s = SingleNormSet(3, alpha=0.1)
    a, p, _ = pair_samples(y[:300], 1, 0)
    s.calibrate(x[:300][a], x[:300][p])
    det = ConformalSetDetector(s, n_samples=10, variant="neg-pos", seed=1).fit(x[300:], y[300:])
    assert detector_info("conformal_set").needs_labels
    det.save(tmp_path / "det.safetensors")
    back = load_detector(tmp_path / "det.safetensors")
    assert isinstance(back, ConformalSetDetector) and back.conformal_set.threshold_ == s.threshold_
    np.testing.assert_array_equal(back.score_samples(x[:50]), det.score_samples(x[:50]))


def _gaussian_classes(rng, n, d, n_classes=8):
    """Labelled embeddings of ``n_classes`` anisotropic Gaussians in d dimensions (one shared covariance)."""
    means = np.random.default_rng(123).normal(size=(n_classes, d)) * 3.0
    mix = np.random.default_rng(124).normal(size=(d, d)) / math.sqrt(d)
    scales = np.exp(np.random.default_rng(125).normal(size=d))
    y = rng.integers(0, n_classes, n)
    return means[y] + (rng.normal(size=(n, d)) * scales) @ mix, y


def test_ellipsoid_covers_in_high_dimension_when_pairs_share_embeddings():
    """Regression: Σ came from half of the calibration *pairs* and q̂ from the other half, but with one
    positive per anchor the two halves reuse the same embeddings. At d close to the number of pairs Σ overfits
    those embeddings, q̂ came out too small and coverage fell to 0.82 at target 0.95 (d = 150 here; 0.79 on
    1,280-d CIFAR-10 features). The halves must be disjoint in embeddings (§5: Σ from data disjoint from
    D_cal). Mean over 6 independent draws, each with 4,000 test pairs; 0.015 below target is > 4 s.e."""
    d, rng = 150, np.random.default_rng(0)
    covs = []
    for s in range(6):
        zc, yc = _gaussian_classes(rng, 1400, d)
        zt, yt = _gaussian_classes(rng, 2000, d)
        a, p, _ = pair_samples(yc, 1, seed=s)
        e = MahalanobisEllipsoid(d, alpha=0.05, seed=s).calibrate(zc[a], zc[p])
        assert e.n_covariance_ + e.n_calibration_ <= len(a)
        covs.append(evaluate_set(e, zt, yt, pairs_per_anchor=2, seed=s)["coverage"])
    assert np.mean(covs) >= 0.95 - 0.015, covs


def test_ellipsoid_calibration_halves_share_no_embedding():
    rng = np.random.default_rng(1)
    z, y = _gaussian_classes(rng, 400, 5)
    a, p, _ = pair_samples(y, 1, seed=0)
    first, second = MahalanobisEllipsoid._disjoint_halves(z[a], z[p], np.random.default_rng(0))
    rows_first = {r.tobytes() for r in np.r_[z[a][first], z[p][first]]}
    rows_second = {r.tobytes() for r in np.r_[z[a][second], z[p][second]]}
    assert rows_first and rows_second and not rows_first & rows_second
    assert not set(first) & set(second)
    # Pairs that share nothing (an anchor and its own view) are split as pairs: none is left unused.
    v = z + 0.1 * rng.normal(size=z.shape)
    first, second = MahalanobisEllipsoid._disjoint_halves(z, v, np.random.default_rng(0))
    assert len(first) + len(second) == len(z) and abs(len(first) - len(second)) <= 1


def test_ellipsoid_fit_estimates_the_positive_difference_covariance():
    """fit(labels): Σ = E[(Z − Z⁺)(Z − Z⁺)ᵀ] for an anchor drawn uniformly and a positive drawn uniformly from
    its class, against the brute-force double loop over all same-class pairs; fit(views) likewise."""
    rng = np.random.default_rng(2)
    z, y = _gaussian_classes(rng, 60, 4, n_classes=3)
    brute = np.zeros((4, 4))
    for i in range(len(z)):
        same = [j for j in range(len(z)) if y[j] == y[i] and j != i]
        for j in same:
            diff = (z[i] - z[j])[:, None]
            brute += diff @ diff.T / len(same)
    brute /= len(z)
    e = MahalanobisEllipsoid(4, shrinkage=0.0).fit(z, y)
    np.testing.assert_allclose(e.covariance().numpy(), brute, rtol=1e-10)
    views = z[:, None, :] + rng.normal(size=(60, 3, 4))
    diffs = (views - z[:, None, :]).reshape(-1, 4)
    e = MahalanobisEllipsoid(4, shrinkage=0.0).fit(z, views=views)
    np.testing.assert_allclose(e.covariance().numpy(), diffs.T @ diffs / len(diffs), rtol=1e-10)
    with pytest.raises(ValueError, match="labels or views"):
        MahalanobisEllipsoid(4).fit(z)
    with pytest.raises(ValueError, match="two members"):
        MahalanobisEllipsoid(4).fit(z[:3], np.array([0, 1, 1]))


def test_ellipsoid_fitted_on_held_out_data_calibrates_on_every_pair_and_covers():
    d, rng = 150, np.random.default_rng(3)
    covs = []
    for s in range(4):
        zf, yf = _gaussian_classes(rng, 1000, d)
        zc, yc = _gaussian_classes(rng, 800, d)
        zt, yt = _gaussian_classes(rng, 2000, d)
        e = MahalanobisEllipsoid(d, alpha=0.05).fit(zf, yf)
        a, p, _ = pair_samples(yc, 1, seed=s)
        e.calibrate(zc[a], zc[p])
        assert e.n_calibration_ == len(a) and e.n_covariance_ == 0
        covs.append(evaluate_set(e, zt, yt, pairs_per_anchor=2, seed=s)["coverage"])
    assert np.mean(covs) >= 0.95 - 0.015, covs
    # The fitted covariance survives save / load, so recalibrating a loaded set keeps every pair too.
    import os
    import tempfile

    from conformood.conformal.sets.families import load_conformal_set

    with tempfile.TemporaryDirectory() as tmp:
        e.save(os.path.join(tmp, "ell"))
        back = load_conformal_set(os.path.join(tmp, "ell"))
    back.calibrate(zc[a], zc[p])
    assert back.n_calibration_ == len(a) and back.threshold_ == pytest.approx(e.threshold_)


def test_calibrate_labelled_halves_the_points_for_the_ellipsoid_and_covers():
    """§5 protocol: Σ from a random half of the calibration embeddings, q̂ from pairs within the other half;
    recalibrating on new data estimates Σ anew (it is not kept as if it were held out)."""
    from conformood.conformal import calibrate_labelled

    d, rng = 150, np.random.default_rng(4)
    covs, sigmas = [], []
    e = MahalanobisEllipsoid(d, alpha=0.05)
    for s in range(4):
        zc, yc = _gaussian_classes(rng, 1400, d)
        zt, yt = _gaussian_classes(rng, 2000, d)
        calibrate_labelled(e, zc, yc, seed=s)
        assert e.n_covariance_ == 700 and e.n_calibration_ == 700 and not bool(e.covariance_fitted)
        sigmas.append(e.covariance().clone())
        covs.append(evaluate_set(e, zt, yt, pairs_per_anchor=2, seed=s)["coverage"])
    assert np.mean(covs) >= 0.95 - 0.015, covs
    assert not torch.equal(sigmas[0], sigmas[1])
    ball = calibrate_labelled(ConformalBall(d), zc, yc, seed=0)
    assert ball.n_calibration_ == len(zc)
    with pytest.raises(ValueError, match="labels"):
        calibrate_labelled(ball, zc, yc[:-1])
