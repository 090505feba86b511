"""The detector contract shared by every score: sklearn-style, higher = more in-distribution."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError


class BaseDetector(BaseEstimator):
    """``fit(features, labels=None) -> self``; ``score_samples(features) -> ndarray`` (higher = more normal).

    The constructor only stores parameters (so ``sklearn.base.clone`` works); learned state ends in ``_``.
    """

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(features) first")

    def fit(self, features, labels=None):  # pragma: no cover - interface
        raise NotImplementedError

    def score_samples(self, features) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def decision_function(self, features) -> np.ndarray:
        """Same as :meth:`score_samples` (no offset: thresholds come from conformal calibration)."""
        return self.score_samples(features)
