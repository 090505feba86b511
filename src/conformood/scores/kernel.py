"""Kernel scores on (normalised) features: RBF kernel density (FIRM app. C eq. 8) and a linear one-class SVM."""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import logsumexp

from .._validation import check_features, check_positive_float
from .base import BaseDetector
from .knn import l2_normalize

_BLOCK = 1 << 24


def _prepared(detector, features, fitted: bool) -> np.ndarray:
    """float64 features, checked (against the fitted width when ``fitted``) and L2-normalised if asked."""
    n_features = detector.n_features_in_ if fitted else None
    x = check_features(features, "features", n_features=n_features).astype(np.float64)
    return l2_normalize(x) if detector.normalize else x


class KDEDetector(BaseDetector):
    """RBF kernel density: (1/gamma) log sum_y exp(-gamma ||x - y||^2) over the training bank.

    FIRM paper appendix C eq. (8) defines the anomaly score KDE_gamma(x) = -(1/gamma) log sum_y
    exp(-gamma ||x - y||^2); this detector returns its negation (higher = more in-distribution). With
    ``normalize`` the features are L2-normalised first (as for the contrastive scores). Computed in float64
    blocks with a running log-sum-exp, so memory stays bounded for any bank size.
    """

    def __init__(self, gamma: float = 1.0, normalize: bool = True) -> None:
        self.gamma = gamma
        self.normalize = normalize
        self._check_params()

    _learned = {"bank_": ("n", "d"), "n_features_in_": "int"}

    def _check_params(self) -> None:
        check_positive_float(self.gamma, "gamma")

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> KDEDetector:
        self._check_params()
        self.bank_ = _prepared(self, features, fitted=False)
        self.n_features_in_ = self.bank_.shape[1]
        return self

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        self._check_fitted()
        x = _prepared(self, features, fitted=True)
        bank = self.bank_
        bank_sq = np.einsum("ij,ij->i", bank, bank)
        q_chunk = max(1, min(x.shape[0], _BLOCK // max(1, bank.shape[0])))
        out = np.empty(x.shape[0])
        for s in range(0, x.shape[0], q_chunk):
            q = x[s : s + q_chunk]
            sq = np.einsum("ij,ij->i", q, q)[:, None] + bank_sq[None, :] - 2.0 * q @ bank.T
            out[s : s + q_chunk] = logsumexp(-self.gamma * np.maximum(sq, 0.0), axis=1) / self.gamma
        return out


class LinearOCSVMDetector(BaseDetector):
    """Linear one-class SVM (Schölkopf et al. 2001), FIRM paper appendix C eq. (9)-(11): s(x) = w^T x - rho.

    Solved by scikit-learn's ``OneClassSVM(kernel="linear", nu=nu)``; the detector keeps only w and rho, so
    scoring is one matrix-vector product. With ``normalize`` the features are L2-normalised first.
    """

    def __init__(self, nu: float = 0.1, normalize: bool = True) -> None:
        self.nu = nu
        self.normalize = normalize
        self._check_params()

    _learned = {"w_": ("d",), "rho_": "float", "n_features_in_": "int"}

    def _check_params(self) -> None:
        if isinstance(self.nu, bool) or not isinstance(self.nu, numbers.Real) or not 0.0 < float(self.nu) <= 1.0:
            raise ValueError(f"nu must be a number in (0, 1], got {self.nu!r}")

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> LinearOCSVMDetector:
        from sklearn.svm import OneClassSVM

        self._check_params()
        if check_features(features, "features").shape[0] < 2:
            raise ValueError("a one-class SVM needs at least 2 training samples")
        x = _prepared(self, features, fitted=False)
        svm = OneClassSVM(kernel="linear", nu=self.nu).fit(x)
        self.w_ = np.asarray(svm.coef_, dtype=np.float64).ravel()
        self.rho_ = float(np.mean(x @ self.w_ - svm.decision_function(x)))
        self.n_features_in_ = x.shape[1]
        return self

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        self._check_fitted()
        return _prepared(self, features, fitted=True) @ self.w_ - self.rho_
