"""Library errors of the hardening issue: each was a crash, a wrong answer or an unnamed parameter before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conformood.conformal import adaptive_correction, crc_threshold
from conformood.losses import InfoNCELoss
from conformood.losses.coverage import ATLoss, COATLoss
from conformood.scores import ClassConditionalGaussianDetector, LinearOCSVMDetector, MahalanobisDetector, ViMDetector

RNG = np.random.default_rng(0)
X, Y = RNG.normal(size=(60, 4)), np.arange(60) % 2


def test_adaptive_correction_with_huge_base_thresholds_on_the_compiled_path():
    """tau - 1 rounded to tau for tau near 1e308, and the bucket width divided by zero (ZeroDivisionError)."""
    p = np.random.default_rng(0).uniform(size=(30, 100, 100))
    m = p > 0.3
    assert adaptive_correction(p, m, np.full(30, 1e308), 0.1) == 1e308
    mixed = np.r_[-1e308, np.full(29, 1e308)]
    assert np.isfinite(adaptive_correction(p, m, mixed, 0.1))


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300])
def test_gaussian_detectors_on_extreme_features_score_as_on_ordinary_ones(scale):
    """LinAlgError, NaN or a false 'identical rows' error before; Mahalanobis is scale-invariant, the Gaussian
    log-density shifts by -2 d log(scale)."""
    for solver in ("pinv", "ridge"):
        ref = MahalanobisDetector(solver=solver).fit(X, Y).score_samples(X)
        got = MahalanobisDetector(solver=solver).fit(X * scale, Y).score_samples(X * scale)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    ref = ClassConditionalGaussianDetector().fit(X, Y).score_samples(X)
    got = ClassConditionalGaussianDetector().fit(X * scale, Y).score_samples(X * scale)
    np.testing.assert_allclose(got, ref - 2 * X.shape[1] * np.log(scale), rtol=1e-9)


def test_mahalanobis_matrix_form_equals_the_per_class_quadratic_form():
    x, y = RNG.normal(size=(300, 6)) + 5, np.arange(300) % 3
    det = MahalanobisDetector().fit(x, y)
    q = RNG.normal(size=(50, 6)) * 3 + 5
    brute = np.max([-np.einsum("ij,jk,ik->i", q - mu, det.precision_, q - mu) for mu in det.means_], axis=0)
    np.testing.assert_allclose(det.score_samples(q), brute, rtol=1e-9, atol=1e-9)


def _monitor(**options):
    from conformood.conformal import ConformalDetector
    from conformood.monitor import ConformalMonitor
    from conformood.scores import get_detector

    rng = np.random.default_rng(0)
    cd = ConformalDetector(get_detector("center").fit(rng.normal(size=(20, 3)))).calibrate(rng.normal(size=(10, 3)))
    return ConformalMonitor(cd, **options)


def _conformal_detector(**options):
    from conformood.conformal import ConformalDetector
    from conformood.scores import get_detector

    return ConformalDetector(get_detector("center"), **options)


@pytest.mark.parametrize("call, name", [
    (lambda: crc_threshold(np.full((3, 2, 2), 0.5), np.ones((3, 2, 2), bool), 0.5, loss_bound="1"), "loss_bound"),
    (lambda: LinearOCSVMDetector(nu="a"), "nu"),
    (lambda: ViMDetector(weight=np.ones((2, 3)), bias=np.ones(2), dim=2.5), "dim"),
    (lambda: _monitor(seed=-1), "seed"),
    (lambda: _monitor(seed="abc"), "seed"),
    (lambda: __import__("conformood.monitor", fromlist=["x"]).online_p_values(np.ones(3), np.ones(2), chunk=0),
     "chunk"),
    (lambda: __import__("conformood.monitor", fromlist=["x"]).log_mixture_martingale(np.array([0.5]), grid=0),
     "grid"),
    (lambda: __import__("conformood.losses", fromlist=["x"]).JointContrastiveCELoss(weight=float("nan")), "weight"),
    (lambda: _conformal_detector(alpha=2.0), "alpha"),
    (lambda: _conformal_detector(feature_source="mobilenet"), "feature_source"),
])
def test_parameter_errors_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_losses_refuse_numpy_and_integer_inputs_clearly():
    p = torch.rand(3, 4, 4)
    with pytest.raises(TypeError, match="torch tensors"):
        COATLoss(0.1)(p.numpy(), (p > 0.3).numpy(), np.zeros(3))
    with pytest.raises(TypeError, match="torch tensors"):
        ATLoss()(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="negatives must be a floating-point"):
        InfoNCELoss()(torch.randn(4, 3), torch.randn(4, 3), torch.ones(5, 3, dtype=torch.long))
