"""The worst-patch Gaussian detector: brute force, persistence, validation, and what it is for."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conformood.scores import PatchGaussianDetector, get_detector, load_detector


def _brute_force(train, test, ridge):
    flat = train.reshape(-1, train.shape[-1]).astype(np.float64)
    mu = flat.mean(axis=0)
    cov = np.cov(flat, rowvar=False)
    cov = cov + ridge * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    precision = np.linalg.inv(cov)
    out = np.empty(test.shape[:2])
    for i in range(test.shape[0]):
        for p in range(test.shape[1]):
            z = test[i, p] - mu
            out[i, p] = z @ precision @ z
    return out


def test_scores_equal_a_per_patch_loop():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(70, 9, 4)), rng.normal(size=(5, 9, 4)) * 1.5
    det = PatchGaussianDetector(ridge=1e-3).fit(train)
    dist = _brute_force(train, test, 1e-3)
    np.testing.assert_allclose(det.patch_distances(test), dist, rtol=1e-9)
    np.testing.assert_allclose(det.score_samples(test), -dist.max(axis=1), rtol=1e-9)
    mean = PatchGaussianDetector(reduce="mean", ridge=1e-3).fit(train)
    np.testing.assert_allclose(mean.score_samples(test), -dist.mean(axis=1), rtol=1e-9)


def test_one_odd_patch_is_found_where_pooling_misses_it():
    rng = np.random.default_rng(1)
    normal = rng.normal(size=(200, 64, 3))
    defect = rng.normal(size=(100, 64, 3))
    defect[:, 0] += 6.0  # one patch of 64 is off
    det = get_detector("patch_gaussian").fit(normal[:100])
    truth = np.r_[np.ones(100), np.zeros(100)]
    assert roc_auc_score(truth, np.r_[det.score_samples(normal[100:]), det.score_samples(defect)]) > 0.99
    pooled = get_detector("mahalanobis").fit(normal[:100].mean(1), np.zeros(100, int))
    pooled_auc = roc_auc_score(truth, np.r_[pooled.score_samples(normal[100:].mean(1)),
                                            pooled.score_samples(defect.mean(1))])
    assert pooled_auc < 0.95


def test_save_load_and_validation(tmp_path):
    rng = np.random.default_rng(2)
    train, test = rng.normal(size=(20, 6, 5)), rng.normal(size=(4, 6, 5))
    det = PatchGaussianDetector().fit(train)
    det.save(tmp_path / "patch.safetensors")
    np.testing.assert_allclose(load_detector(tmp_path / "patch.safetensors").score_samples(test),
                               det.score_samples(test), atol=1e-12)
    with pytest.raises(ValueError, match="patch features"):
        det.score_samples(test[:, 0])
    with pytest.raises(ValueError, match="fitted on 5"):
        det.score_samples(test[..., :3])
    bad = test.copy()
    bad[1, 2, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        det.score_samples(bad)
    with pytest.raises(ValueError, match="reduce"):
        PatchGaussianDetector(reduce="median")
    with pytest.raises(ValueError, match="at least 2 patches"):
        PatchGaussianDetector().fit(train[:1, :1])
