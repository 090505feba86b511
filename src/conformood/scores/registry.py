"""One registry of detectors, used by the library and the CLI alike."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

from .base import BaseDetector
from .ensembles import (
    EnsDetector,
    L2EnsDetector,
    ShiftDetector,
    SimPlusSMuDetector,
    SMuDetector,
)
from .gaussian import ClassConditionalGaussianDetector, MahalanobisDetector
from .kernel import KDEDetector, LinearOCSVMDetector
from .knn import KNNCosineDetector, KNNCosineNormDetector, KNNSunDetector
from .logits import EnergyDetector, MaxLogitDetector, MSPDetector, ViMDetector
from .simple import CenterDetector, L2NormDetector


@dataclass(frozen=True)
class DetectorInfo:
    """What a registered detector takes and where it comes from."""

    name: str
    cls: type[BaseDetector]
    input: str  # "features", "logits" or "images"
    needs_labels: bool
    reference: str


_INFOS = [
    DetectorInfo("knn_cosine", KNNCosineDetector, "features", False, "s_con, FIRM eq. 3"),
    DetectorInfo("knn_cosine_norm", KNNCosineNormDetector, "features", False, "s_con*, FIRM eq. 4"),
    DetectorInfo("knn_sun", KNNSunDetector, "features", False, "Sun et al. 2022, k-th neighbour distance"),
    DetectorInfo("center", CenterDetector, "features", False, "1 - s_center, FIRM app. B eq. 7"),
    DetectorInfo("l2_norm", L2NormDetector, "features", False, "s_l2, OECL eq. 9 / 14"),
    DetectorInfo("gaussian", ClassConditionalGaussianDetector, "features", True, "CLP eq. 2"),
    DetectorInfo("mahalanobis", MahalanobisDetector, "features", True, "Lee et al. 2018, shared covariance"),
    DetectorInfo("kde", KDEDetector, "features", False, "-KDE_gamma, FIRM app. C eq. 8"),
    DetectorInfo("ocsvm", LinearOCSVMDetector, "features", False, "linear OC-SVM, FIRM app. C eq. 9-11"),
    DetectorInfo("msp", MSPDetector, "logits", False, "Hendrycks & Gimpel 2017"),
    DetectorInfo("energy", EnergyDetector, "logits", False, "Liu et al. 2020, T = 1"),
    DetectorInfo("maxlogit", MaxLogitDetector, "logits", False, "Hendrycks et al. 2022"),
    DetectorInfo("vim", ViMDetector, "features", False, "Wang et al. 2022 (needs weight=, bias=)"),
    DetectorInfo("s_mu", SMuDetector, "images", False, "s_mu, OECL eq. 10 / 16 (needs encoder=)"),
    DetectorInfo("l2_ens", L2EnsDetector, "images", False, "s_l2-ens, OECL eq. 15 (needs encoder=)"),
    DetectorInfo("sim_s_mu", SimPlusSMuDetector, "images", False, "sim + s_mu, OECL Table VI (needs encoder=)"),
    DetectorInfo("shift", ShiftDetector, "images", False, "s_shift, FIRM app. B eq. 5 (needs encoder=)"),
    DetectorInfo("ens", EnsDetector, "images", False, "s_ens, FIRM app. B eq. 6 (needs encoder=)"),
]
_REGISTRY = {info.name: info for info in _INFOS}
_BY_CLASS = {info.cls.__name__: info.cls for info in _INFOS}


def list_detectors() -> list[str]:
    """Names accepted by :func:`get_detector`."""
    return list(_REGISTRY)


def detector_info(name: str) -> DetectorInfo:
    """Input kind, label need and reference of a registered detector."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def get_detector(name: str, **options) -> BaseDetector:
    """A new, unfitted detector by registry name; ``options`` are its constructor's parameters."""
    cls = detector_info(name).cls
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"detector {name!r} has no option(s) {unknown}; it accepts {accepted or 'none'}")
    return cls(**options)


def load_detector(path: str | os.PathLike) -> BaseDetector:
    """Load any detector written by ``detector.save(path)``."""
    from ..io import load_state, saved_kind

    tensors, config = load_state(path)
    kind = saved_kind(path)
    if kind not in _BY_CLASS:
        raise ValueError(f"{path} holds a {kind!r}, which is not a registered detector")
    return _BY_CLASS[kind]._from_state(tensors, config)
