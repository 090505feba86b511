"""One loader for every saved kind of conformood file.

:func:`load` reads the kind a file records (:func:`conformood.io.saved_kind`) and rebuilds the object with that
kind's own checked loader: a detector (:func:`conformood.scores.load_detector`), a calibrated detector
(:meth:`ConformalDetector.load`), a conformal set (:func:`load_conformal_set`) or a model from
``conformood train`` (:func:`conformood.train.load_trained_model`, which returns the model and its recipe).
:func:`load_detector` is the same restricted to what scores inputs: a detector or a calibrated one.
"""

from __future__ import annotations

import os
from typing import Any

from ..io import saved_kind
from .detection.detector import KIND as CALIBRATED_KIND
from .detection.detector import ConformalDetector


def load(path: str | os.PathLike) -> Any:
    """The object saved at ``path``, whatever its kind (each kind's loader verifies the digest and every field)."""
    from ..scores import DETECTORS
    from ..train.recipes import MODEL_KIND, load_trained_model

    kind = saved_kind(path)
    if kind == CALIBRATED_KIND:
        return ConformalDetector.load(path)
    if kind == "ConformalSet":
        from .sets.families import load_conformal_set

        return load_conformal_set(path)
    if kind == MODEL_KIND:
        return load_trained_model(path)
    if kind in {DETECTORS.info(name).class_name for name in DETECTORS}:
        from ..scores import load_detector as load_bare

        return load_bare(path)
    known = "a detector, a calibrated detector, a conformal set or a trained model"
    raise ValueError(f"{path} holds a {kind!r}, which is not something conformood.load reads ({known})"
                     if kind else f"{path} is not a file written by conformood ({known})")


def load_detector(path: str | os.PathLike) -> Any:
    """A detector or a calibrated detector (:class:`ConformalDetector`) from ``path``; other kinds are refused."""
    obj = load(path)
    if not hasattr(obj, "score_samples") and not isinstance(obj, ConformalDetector):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a detector")
    return obj
