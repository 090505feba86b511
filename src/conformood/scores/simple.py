"""Scores without a neighbour search: s_center (FIRM app. B eq. 7) and s_l2 (OECL eq. 9 / 14)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .._validation import check_features
from .base import BaseDetector
from .knn import l2_normalize


class CenterDetector(BaseDetector):
    """Cosine similarity to the centre of the in-distribution features.

    FIRM paper appendix B eq. (7) defines the anomaly score s_center(x) = 1 - cos(phi(x), c) with c the centre
    of the ID representations; as a normality score (higher = more in-distribution) this detector returns
    cos(phi(x), c) = 1 - s_center(x). ``normalize_before_mean`` takes c as the mean of the unit-normalised
    training features (default) rather than of the raw ones.
    """

    def __init__(self, normalize_before_mean: bool = True) -> None:
        self.normalize_before_mean = normalize_before_mean

    _learned = {"center_": ("d",), "n_features_in_": "int"}

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> CenterDetector:
        x = check_features(features, "features").astype(np.float64)
        center = (l2_normalize(x) if self.normalize_before_mean else x).mean(axis=0)
        if not np.linalg.norm(center) > 0:
            raise ValueError("the training features average to the zero vector: the centre has no direction")
        self.center_ = center / np.linalg.norm(center)
        self.n_features_in_ = x.shape[1]
        return self

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        self._check_fitted()
        x = check_features(features, "features", n_features=self.n_features_in_).astype(np.float64)
        return l2_normalize(x) @ self.center_


class L2NormDetector(BaseDetector):
    """s_l2 = ||f(x)||_2^2 (OECL paper eq. 9 and 14): contrastive features of inliers have larger norms.

    ``fit`` only records the dimensionality; the score needs no training data.
    """

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> L2NormDetector:
        x = check_features(features, "features")
        self.n_features_in_ = x.shape[1]
        return self

    def score_samples(self, features: ArrayLike) -> np.ndarray:
        self._check_fitted()
        x = check_features(features, "features", n_features=self.n_features_in_).astype(np.float64)
        return np.einsum("ij,ij->i", x, x)
