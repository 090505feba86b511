"""Gaussian scores on labelled features: class-conditional Gaussians (CLP eq. 2) and Lee et al.'s Mahalanobis."""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike

from .._validation import check_features, check_positive_float
from .base import BaseDetector

_CHUNK = 8192


def _check_labels(labels, n: int) -> np.ndarray:
    if labels is None:
        raise ValueError("this detector needs class labels: call fit(features, labels)")
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    return y


def _scale_of(x: np.ndarray) -> float:
    """1.0 for features of ordinary magnitude; for extreme ones (max |x| above 1e100 or below 1e-100) the power
    of two nearest max |x|, so that x / scale is exact and the covariance neither overflows nor underflows."""
    top = float(np.abs(x).max()) if x.size else 0.0
    if top == 0.0 or 1e-100 <= top <= 1e100:
        return 1.0
    return float(2.0 ** np.round(np.log2(top)))


def _class_moments(x: np.ndarray, y: np.ndarray, min_count: int):
    """Per-class means and scatter matrices sum (x - mu)(x - mu)^T, accumulated in float64 chunks."""
    classes = np.unique(y)
    counts = np.array([np.count_nonzero(y == c) for c in classes])
    if counts.min() < min_count:
        bad = classes[counts < min_count].tolist()
        raise ValueError(
            f"classes {bad} have fewer than {min_count} samples: a covariance needs at least {min_count}"
        )
    d = x.shape[1]
    means = np.zeros((classes.size, d))
    scatters = np.zeros((classes.size, d, d))
    for i, c in enumerate(classes):
        idx = np.flatnonzero(y == c)
        means[i] = x[idx].astype(np.float64).mean(axis=0)
        for s in range(0, idx.size, _CHUNK):
            centred = x[idx[s : s + _CHUNK]].astype(np.float64) - means[i]
            scatters[i] += centred.T @ centred
    return classes, counts, means, scatters


class ClassConditionalGaussianDetector(BaseDetector):
    """max_c [ -(f - mu_c)^T Sigma_c^-1 (f - mu_c) - log((2 pi)^d det Sigma_c) ] (CLP paper eq. 2).

    One Gaussian per class with its own covariance, estimated in float64 from streamed chunks; a ridge
    ``ridge * mean(diag Sigma_c)`` is added to each covariance so that it is invertible (and the log
    determinant finite) even with fewer samples than dimensions. Needs labels; each class needs >= 2 samples.
    """

    def __init__(self, ridge: float = 1e-6) -> None:
        self.ridge = ridge
        self._check_params()

    _learned = {"classes_": ("c",), "means_": ("c", "d"), "cholesky_": ("c", "d", "d"), "logdet_": ("c",),
                "scale_": "float", "n_features_in_": "int"}

    def _check_params(self) -> None:
        check_positive_float(self.ridge, "ridge")

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> ClassConditionalGaussianDetector:
        check_positive_float(self.ridge, "ridge")
        x = check_features(features, "features").astype(np.float64)
        y = _check_labels(labels, x.shape[0])
        scale = _scale_of(x)
        classes, counts, means, scatters = _class_moments(x / scale if scale != 1.0 else x, y, min_count=2)
        d = x.shape[1]
        chol = np.empty_like(scatters)
        logdet = np.empty(classes.size)
        for i in range(classes.size):
            cov = scatters[i] / (counts[i] - 1)
            if not np.trace(cov) > 0:
                raise ValueError(f"class {classes[i]!r} has identical features in every row: its covariance is zero "
                                 "and the Gaussian density is undefined")
            cov += self.ridge * max(np.trace(cov) / d, np.finfo(np.float64).tiny) * np.eye(d)
            try:
                chol[i] = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError as exc:
                raise ValueError(f"class {classes[i]!r}: the covariance is not positive definite ({exc}); raise "
                                 "ridge or check the features") from None
            logdet[i] = 2.0 * np.log(np.diag(chol[i])).sum()
        self.classes_, self.means_, self.cholesky_, self.logdet_ = classes, means, chol, logdet
        self.scale_ = scale
        self.n_features_in_ = d
        return self

    def class_scores(self, features: ArrayLike) -> np.ndarray:
        """Per-class terms of CLP eq. 2, shape (m, n_classes)."""
        self._check_fitted()
        x = check_features(features, "features", n_features=self.n_features_in_).astype(np.float64)
        if self.scale_ != 1.0:  # fitted on x / scale: log det Sigma gains 2 d log(scale), the quadratic form is equal
            x = x / self.scale_
        d = self.n_features_in_
        shift = 2.0 * d * np.log(self.scale_)
        out = np.empty((x.shape[0], self.classes_.size))
        for i in range(self.classes_.size):
            for s in range(0, x.shape[0], _CHUNK):
                diff = x[s : s + _CHUNK] - self.means_[i]
                w = scipy.linalg.solve_triangular(self.cholesky_[i], diff.T, lower=True)
                out[s : s + _CHUNK, i] = -(w * w).sum(axis=0) - (d * np.log(2 * np.pi) + self.logdet_[i]) - shift
        return out

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        return self.class_scores(features).max(axis=1)


class MahalanobisDetector(BaseDetector):
    """Lee et al. (2018): max_c -(f - mu_c)^T Sigma^-1 (f - mu_c) with one covariance shared by the classes.

    Sigma = 1/N sum_c sum_{i in c} (f_i - mu_c)(f_i - mu_c)^T in float64, inverted with the pseudo-inverse
    (``solver="pinv"``, as the reference implementation) or with a ridge (``solver="ridge"``). Needs labels.

    **Convention (differs from the authors' code).** The reference computes -½ (f - mu)^T Sigma^-1 (f - mu);
    this detector omits the factor ½. A positive factor does not change rankings or conformal decisions.
    """

    def __init__(self, solver: str = "pinv", ridge: float = 1e-6) -> None:
        self.solver = solver
        self.ridge = ridge
        self._check_params()

    _learned = {"classes_": ("c",), "means_": ("c", "d"), "precision_": ("d", "d"), "scale_": "float",
                "n_features_in_": "int"}

    def _check_params(self) -> None:
        if self.solver not in ("pinv", "ridge"):
            raise ValueError(f"solver must be 'pinv' or 'ridge', got {self.solver!r}")
        check_positive_float(self.ridge, "ridge")

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> MahalanobisDetector:
        self._check_params()
        x = check_features(features, "features").astype(np.float64)
        y = _check_labels(labels, x.shape[0])
        scale = _scale_of(x)  # the distance is scale-invariant: extreme features are fitted as x / scale
        classes, _, means, scatters = _class_moments(x / scale if scale != 1.0 else x, y, min_count=1)
        if x.shape[0] - classes.size < 1:
            raise ValueError("a shared covariance needs more samples than classes")
        cov = scatters.sum(axis=0) / x.shape[0]
        try:
            if self.solver == "pinv":
                precision = np.linalg.pinv(cov, hermitian=True)
            else:
                d = cov.shape[0]
                precision = np.linalg.inv(
                    cov + self.ridge * max(np.trace(cov) / d, np.finfo(np.float64).tiny) * np.eye(d))
        except np.linalg.LinAlgError as exc:
            raise ValueError(f"the shared covariance could not be inverted ({exc}); check the features for "
                             "non-finite or degenerate values, or use solver='ridge'") from None
        self.classes_, self.means_, self.precision_ = classes, means, precision
        self.scale_ = scale
        self.n_features_in_ = x.shape[1]
        return self

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        """max_c -(x - mu_c)^T P (x - mu_c) for all classes at once, as matrix products: with x and mu centred
        at the mean of the class means (which keeps the expansion's cancellation small),
        (x - mu)^T P (x - mu) = x^T P x - 2 x^T P mu + mu^T P mu."""
        self._check_fitted()
        x = check_features(features, "features", n_features=self.n_features_in_).astype(np.float64)
        if self.scale_ != 1.0:
            x = x / self.scale_
        centre = self.means_.mean(axis=0)
        mu = self.means_ - centre
        mu_p = mu @ self.precision_
        mu_term = np.einsum("cj,cj->c", mu_p, mu)
        best = np.empty(x.shape[0])
        for s in range(0, x.shape[0], _CHUNK):
            xc = x[s : s + _CHUNK] - centre
            x_term = np.einsum("ij,ij->i", xc @ self.precision_, xc)
            dist = x_term[:, None] - 2.0 * (xc @ mu_p.T) + mu_term[None, :]
            best[s : s + _CHUNK] = -np.maximum(dist, 0.0).min(axis=1)
        return best
