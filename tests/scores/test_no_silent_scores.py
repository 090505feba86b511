"""No detector returns a non-finite or meaningless score without an error (each case failed silently before)."""

import numpy as np
import pytest

from conformood.conformal import crc_sets
from conformood.scores import (
    ClassConditionalGaussianDetector,
    KNNCosineDetector,
    MahalanobisDetector,
    ViMDetector,
)
from conformood.scores.base import BaseDetector


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    return x, np.repeat(np.arange(3), 40), rng.normal(size=(20, 6))


@pytest.mark.parametrize("ridge", [-1.0, 0.0, float("nan"), float("inf"), "x"])
def test_mahalanobis_and_gaussian_refuse_a_meaningless_ridge(ridge, data):
    x, y, _ = data
    with pytest.raises(ValueError, match="ridge"):
        MahalanobisDetector(solver="ridge", ridge=ridge).fit(x, y)
    with pytest.raises(ValueError, match="ridge"):
        ClassConditionalGaussianDetector(ridge=ridge).fit(x, y)


def test_gaussian_on_identical_rows_raises_instead_of_minus_infinity(data):
    x, y, q = data
    x = x.copy()
    x[y == 1] = 3.0
    with pytest.raises(ValueError, match="identical features"):
        ClassConditionalGaussianDetector().fit(x, y)


def test_vim_on_features_without_a_residual_raises(data):
    _, _, q = data
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 2)) @ rng.normal(size=(2, 6))  # rank 2
    w, b = rng.normal(size=(3, 6)), np.zeros(3)
    with pytest.raises(ValueError, match="residual is zero"):
        ViMDetector(weight=w, bias=b, dim=3).fit(x)


@pytest.mark.parametrize("scale, dtype", [(1e20, np.float32), (1e-200, np.float64), (1e300, np.float64)])
def test_knn_cosine_is_scale_invariant_at_any_representable_scale(scale, dtype, data):
    x, _, q = data
    ref = KNNCosineDetector(n_neighbors=3, backend="torch").fit(x).score_samples(q)
    got = KNNCosineDetector(n_neighbors=3, backend="torch").fit((x * scale).astype(dtype))
    np.testing.assert_allclose(got.score_samples((q * scale).astype(dtype)), ref, atol=1e-5)


def test_complex_input_is_refused(data):
    x, _, q = data
    with pytest.raises(ValueError, match="complex"):
        KNNCosineDetector().fit(x + 1j)
    with pytest.raises(ValueError, match="complex"):
        KNNCosineDetector().fit(x).score_samples(q.astype(np.complex128))


def test_no_detector_returns_a_non_finite_score():
    class Broken(BaseDetector):
        def fit(self, features, labels=None):
            self.n_features_in_ = 1
            return self

        def score_samples(self, features):
            return np.array([0.0, np.nan, -np.inf])

    with pytest.raises(ValueError, match=r"non-finite scores for 2 input\(s\) \(rows 1, 2\)"):
        Broken().fit(None).score_samples(None)


def test_crc_sets_refuses_a_nan_threshold():
    probs = np.full((2, 3, 3), 0.5)
    with pytest.raises(ValueError, match="threshold"):
        crc_sets(probs, float("nan"))
    assert crc_sets(probs, float("inf")).sum() == 0
