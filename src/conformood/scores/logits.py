"""Logit-based baselines (CCS paper Table 2): MSP, Energy, MaxLogit, and ViM on features."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import logsumexp, softmax

from .._validation import check_features, check_positive_float, check_positive_int
from .base import BaseDetector


class _LogitDetector(BaseDetector):
    """Scores computed from logits alone; ``fit`` only records the number of classes."""

    def fit(self, features, labels=None):
        x = check_features(features, "logits")
        if x.shape[1] < 2:
            raise ValueError(f"logits need at least 2 classes (columns), got {x.shape[1]}")
        self.n_features_in_ = x.shape[1]
        return self

    def _logits(self, features) -> np.ndarray:
        self._check_fitted()
        return check_features(features, "logits", n_features=self.n_features_in_).astype(np.float64)


class MSPDetector(_LogitDetector):
    """Maximum softmax probability, max_c softmax(logits)_c (Hendrycks & Gimpel 2017). Takes logits."""

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        return softmax(self._logits(features), axis=1).max(axis=1)


class EnergyDetector(_LogitDetector):
    """Negative free energy T log sum_c exp(logit_c / T) (Liu et al. 2020; T = 1 in the CCS paper). Takes logits."""

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature
        self._check_params()

    def _check_params(self) -> None:
        check_positive_float(self.temperature, "temperature")

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        t = check_positive_float(self.temperature, "temperature")
        return t * logsumexp(self._logits(features) / t, axis=1)


class MaxLogitDetector(_LogitDetector):
    """The largest logit (Hendrycks et al. 2022). Takes logits."""

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        return self._logits(features).max(axis=1)


class ViMDetector(BaseDetector):
    """Virtual-logit matching (Wang et al. 2022): energy minus the scaled residual off the principal subspace.

    Built with the classifier's ``weight`` (C, d) and ``bias`` (C,); takes features. ``fit`` centres the
    training features at u = -pinv(W) b, keeps the residual space orthogonal to the top ``dim`` principal
    directions (default: 1000 for d >= 2048, 512 for d >= 768, else d // 2) and sets the scale (the
    paper's alpha, here ``scale_``) = mean max-logit / mean residual norm on the training
    features. Score (higher = more normal):
    logsumexp(W f + b) - scale_ * ||P_residual (f - u)||.
    """

    _former_state_names = {"alpha_": "scale_"}
    _learned = {"origin_": ("d",), "residual_space_": ("d", "r"), "scale_": "float", "n_features_in_": "int"}

    def __init__(self, weight: ArrayLike | None = None, bias: ArrayLike | None = None, dim: int | None = None) -> None:
        self.weight = weight
        self.bias = bias
        self.dim = dim
        self._check_params()

    def _check_params(self) -> None:
        if self.dim is not None:
            check_positive_int(self.dim, "dim")

    def _check_loaded(self) -> None:
        w, _ = self._classifier()
        if w.shape[1] != self.n_features_in_:
            raise ValueError(f"the classifier takes {w.shape[1]} features, the fitted state {self.n_features_in_}")

    def _classifier(self) -> tuple[np.ndarray, np.ndarray]:
        if self.weight is None or self.bias is None:
            raise ValueError("ViM needs the classifier: ViMDetector(weight=W (C, d), bias=b (C,))")
        w = np.asarray(self.weight, dtype=np.float64)
        b = np.asarray(self.bias, dtype=np.float64)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"weight must be (C, d) and bias (C,), got {w.shape} and {b.shape}")
        return w, b

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> ViMDetector:
        w, b = self._classifier()
        x = check_features(features, "features", n_features=w.shape[1]).astype(np.float64)
        d = x.shape[1]
        dim = self.dim if self.dim is not None else (1000 if d >= 2048 else 512 if d >= 768 else d // 2)
        if not 0 < dim < d:
            raise ValueError(f"dim must lie in 1..{d - 1}, got {dim}")
        u = -np.linalg.pinv(w) @ b
        centred = x - u
        cov = centred.T @ centred / x.shape[0]
        eigval, eigvec = np.linalg.eigh(cov)
        residual_space = eigvec[:, np.argsort(eigval)[::-1][dim:]]
        residual = np.linalg.norm(centred @ residual_space, axis=1)
        if not residual.mean() > 1e-12 * max(1.0, float(np.abs(centred).max())):
            raise ValueError(f"the training features have (numerically) no component outside their top {dim} "
                             "principal directions, so ViM's residual is zero; lower dim")
        max_logit = (x @ w.T + b).max(axis=1)
        self.origin_, self.residual_space_ = u, residual_space
        self.scale_ = float(max_logit.mean() / residual.mean())
        self.n_features_in_ = d
        return self

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        self._check_fitted()
        w, b = self._classifier()
        x = check_features(features, "features", n_features=self.n_features_in_).astype(np.float64)
        energy = logsumexp(x @ w.T + b, axis=1)
        residual = np.linalg.norm((x - self.origin_) @ self.residual_space_, axis=1)
        return energy - self.scale_ * residual
