"""The detector contract shared by every score: sklearn-style, higher = more in-distribution."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from .._validation import check_finite_scores


class BaseDetector(BaseEstimator):
    """``fit(features, labels=None) -> self``; ``score_samples(features) -> ndarray`` (higher = more normal).

    The constructor only stores parameters (so ``sklearn.base.clone`` works); learned state ends in ``_``.
    :meth:`save` writes the learned arrays to safetensors and the parameters and learned scalars to JSON;
    :func:`conformood.scores.load_detector` reads any detector back.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each detector's ``score_samples`` so that no detector ever returns a non-finite score."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("score_samples")
        if own is not None and not getattr(own, "_checks_finite", False):

            @functools.wraps(own)
            def score_samples(self: BaseDetector, features: ArrayLike) -> np.ndarray:
                return check_finite_scores(np.asarray(own(self, features)), f"{type(self).__name__}.score_samples")

            score_samples._checks_finite = True
            cls.score_samples = score_samples

    #: learned attributes saved under a former name: {former: current} (files written before a rename load)
    _former_state_names: dict[str, str] = {}

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(features) first")

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> BaseDetector:  # pragma: no cover - interface
        raise NotImplementedError

    def score_samples(self, features: ArrayLike) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def decision_function(self, features: ArrayLike) -> np.ndarray:
        """Same as :meth:`score_samples` (no offset: thresholds come from conformal calibration)."""
        return self.score_samples(features)

    # -- persistence ---------------------------------------------------------------------------------
    def _learned_state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays, scalars = {}, {}
        for key, value in vars(self).items():
            if not key.endswith("_") or key.startswith("_"):
                continue
            if isinstance(value, np.ndarray):
                arrays[key] = value
            elif isinstance(value, (bool, int, float, str, np.generic)) or value is None:
                scalars[key] = value.item() if isinstance(value, np.generic) else value
            else:
                raise TypeError(f"{type(self).__name__}.{key} of type {type(value).__name__} cannot be saved")
        return arrays, scalars

    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted detector: arrays as safetensors, parameters and scalars as JSON (no pickle)."""
        from ..io import save_state

        self._check_fitted()
        params = dict(self.get_params(deep=False))
        array_params = {k: np.asarray(v) for k, v in params.items() if isinstance(v, np.ndarray)}
        for k in array_params:
            params.pop(k)
        try:
            json.dumps(params)
        except TypeError as exc:
            raise TypeError(
                f"{type(self).__name__} has parameters that are not JSON data (e.g. an encoder); save the encoder "
                "with its own checkpoint and rebuild the detector around it"
            ) from exc
        arrays, scalars = self._learned_state()
        arrays.update({f"param.{k}": v for k, v in array_params.items()})
        save_state(path, arrays, {"params": params, "learned": scalars}, kind=type(self).__name__)

    @classmethod
    def _from_state(cls, tensors: dict, config: dict) -> BaseDetector:
        array_params = {k[len("param."):]: v.numpy() for k, v in tensors.items() if k.startswith("param.")}
        det = cls(**config["params"], **array_params)
        for key, value in tensors.items():
            if not key.startswith("param."):
                setattr(det, key, value.numpy())
        for key, value in config["learned"].items():
            setattr(det, cls._former_state_names.get(key, key), value)
        return det

    @classmethod
    def load(cls, path: str | os.PathLike) -> BaseDetector:
        """Load a detector of this class written by :meth:`save`."""
        from ..io import load_state

        tensors, config = load_state(path, kind=cls.__name__)
        return cls._from_state(tensors, config)
