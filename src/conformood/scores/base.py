"""The detector contract shared by every score: sklearn-style, higher = more in-distribution."""

from __future__ import annotations

import functools
import inspect
import json
import numbers
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
    #: constructor parameters removed since a file format was written: former name -> its successor; a stored
    #: None is dropped, a stored value sets the successor (files of conformood 0.3 store ``k``)
    _former_params: dict[str, str] = {}

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
    #: the learned attributes a saved detector may hold, each "int", "float", "bool" or "str", or an array
    #: given by its axes (a symbol per axis: "d" is ``n_features_in_``, other letters must agree among the
    #: arrays). Loading refuses any other name, a missing one, a wrong type, a non-finite value or a shape that
    #: disagrees; ``tests/scores`` checks each detector's table against what its ``fit`` sets.
    _learned: dict[str, Any] = {"n_features_in_": "int"}

    def _check_params(self) -> None:
        """Check the constructor parameters (the rules ``fit`` applies); also run on every loaded file."""

    def _check_loaded(self) -> None:
        """Consistency checks of a loaded detector beyond :attr:`_learned` (e.g. against array parameters)."""

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

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """``(tensors, config)`` of the fitted detector, as :meth:`save` stores them (and a calibrated
        :class:`~conformood.conformal.ConformalDetector` embeds them)."""
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
        return arrays, {"params": params, "learned": scalars}

    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted detector: arrays as safetensors, parameters and scalars as JSON, with a digest."""
        from ..io import save_state

        tensors, config = self.state()
        save_state(path, tensors, config, kind=type(self).__name__)

    @classmethod
    def _from_state(cls, tensors: dict, config: dict, source: str = "the file") -> BaseDetector:
        """Rebuild a detector from :meth:`state`, validating every stored field (see :attr:`_learned`)."""
        params, learned = config.get("params"), config.get("learned")
        if not isinstance(params, dict) or not isinstance(learned, dict):
            raise ValueError(f"{source}: a saved {cls.__name__} needs 'params' and 'learned' objects")
        array_params = {k[len("param."):]: v.numpy() for k, v in tensors.items() if k.startswith("param.")}
        det = cls._with_params(params, array_params, source)
        arrays = {cls._former_state_names.get(k, k): v for k, v in tensors.items() if not k.startswith("param.")}
        scalars = {cls._former_state_names.get(k, k): v for k, v in learned.items()}
        set_learned_state(det, arrays, scalars, source)
        try:
            det._check_loaded()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: stored {cls.__name__} is inconsistent: {exc}") from None
        return det

    @classmethod
    def _with_params(cls, params: dict, array_params: dict, source: str) -> BaseDetector:
        """``cls(**params)`` after checking every name and type against the constructor, then its rules."""
        params = dict(params)
        for former, current in cls._former_params.items():
            if former in params:
                value = params.pop(former)
                if value is not None:
                    params[current] = value
        names = set(cls._get_param_names())
        unknown = sorted((set(params) | set(array_params)) - names)
        if unknown:
            raise ValueError(f"{source}: {cls.__name__} has no parameter {unknown[0]!r}")
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        for key, value in params.items():
            expected = _scalar_kind(defaults.get(key))
            if expected is not None and value is not None and _scalar_kind(value) != expected and not (
                expected == "float" and _scalar_kind(value) == "int"
            ):
                raise ValueError(f"{source}: {cls.__name__} parameter {key!r} must be of type {expected}, got "
                                 f"{value!r}")
        try:
            det = cls(**params, **array_params)
            det._check_params()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: stored {cls.__name__} parameters are refused: {exc}") from None
        return det

    @classmethod
    def load(cls, path: str | os.PathLike) -> BaseDetector:
        """Load a detector of this class written by :meth:`save`."""
        from ..io import load_state

        tensors, config = load_state(path, kind=cls.__name__)
        return cls._from_state(tensors, config, str(path))


def _scalar_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "str"
    return None


def set_learned_state(det: BaseDetector, arrays: dict, scalars: dict, source: str) -> None:
    """Check stored learned state against ``type(det)._learned`` and set it."""
    spec = type(det)._learned
    name = type(det).__name__
    given = set(arrays) | set(scalars)
    unknown = sorted(given - set(spec))
    if unknown:
        raise ValueError(f"{source}: {name} has no learned attribute {unknown[0]!r}")
    missing = sorted(set(spec) - given)
    if missing:
        raise ValueError(f"{source}: stored {name} lacks its learned attribute {missing[0]!r}")
    sizes: dict[str, int] = {}
    for key, value in scalars.items():
        kind = spec[key]
        if not isinstance(kind, str) or _scalar_kind(value) != kind and not (kind == "float" and
                                                                             _scalar_kind(value) == "int"):
            raise ValueError(f"{source}: {name}.{key} must be {kind if isinstance(kind, str) else 'an array'}, "
                             f"got {value!r}")
        if kind == "int" and key == "n_features_in_" and not 1 <= value:
            raise ValueError(f"{source}: {name}.n_features_in_ must be >= 1, got {value}")
        if kind == "float" and not np.isfinite(value):
            raise ValueError(f"{source}: {name}.{key} must be finite, got {value}")
    if "n_features_in_" in scalars:
        sizes["d"] = scalars["n_features_in_"]
    for key, tensor in arrays.items():
        axes = spec[key]
        if isinstance(axes, str):
            raise ValueError(f"{source}: {name}.{key} must be {axes}, got an array")
        value = tensor.numpy()
        if value.ndim != len(axes):
            raise ValueError(f"{source}: {name}.{key} must have {len(axes)} axes {axes}, got shape {value.shape}")
        for axis, size in zip(axes, value.shape):
            if sizes.setdefault(axis, size) != size:
                raise ValueError(f"{source}: {name}.{key} has shape {value.shape}, inconsistent with the other "
                                 f"stored arrays (axis {axis!r} = {sizes[axis]})")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ValueError(f"{source}: {name}.{key} holds non-finite values")
    for key, value in (arrays | scalars).items():
        setattr(det, key, value.numpy() if hasattr(value, "numpy") else value)
