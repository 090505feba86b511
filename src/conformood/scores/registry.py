"""One registry of detectors, used by the library and the CLI alike."""

from __future__ import annotations

import os

from ..registry import Entry, Registry
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
from .patch import PatchGaussianDetector
from .patchcore import PatchCoreDetector
from .simple import CenterDetector, L2NormDetector

#: Every detector: name -> class, with its input kind ("features", "logits" or "images"), whether ``fit``
#: needs class labels, and the paper it comes from. Detectors of higher layers (the conformal-set detector of
#: :mod:`conformood.conformal`) are declared here by dotted path and imported on first use, so the list is the
#: same whatever was imported; nothing registers itself on import.
DETECTORS: Registry = Registry("detector")

INPUT_KINDS = ("features", "patches", "logits", "images")

DetectorInfo = Entry  # a registered detector: .name, .factory (the class), .input, .needs_labels, .reference


def register_detector(name: str, cls: type[BaseDetector], input: str, needs_labels: bool, reference: str) -> None:
    """Add a detector class to :data:`DETECTORS` (``input``: "features", "patches" (n, n_patches, d), "logits"
    or "images")."""
    if input not in INPUT_KINDS:
        raise ValueError(f"input must be one of {INPUT_KINDS}, got {input!r}")
    DETECTORS.register(name, cls, reference=reference, description=(cls.__doc__ or "").split("\n")[0],
                       input=input, needs_labels=needs_labels, class_name=cls.__name__)


def declare_detector(name: str, target: str, input: str, needs_labels: bool, reference: str,
                     description: str) -> None:
    """Declare a detector of a higher layer by ``"package.module:Class"``; imported when first created or
    loaded."""
    if input not in INPUT_KINDS:
        raise ValueError(f"input must be one of {INPUT_KINDS}, got {input!r}")
    DETECTORS.declare(name, target, reference=reference, description=description, input=input,
                      needs_labels=needs_labels, class_name=target.rpartition(":")[2])


for _name, _cls, _input, _labels, _reference in (
    ("knn_cosine", KNNCosineDetector, "features", False, "s_con, FIRM eq. 3"),
    ("knn_cosine_norm", KNNCosineNormDetector, "features", False, "s_con*, FIRM eq. 4"),
    ("knn_sun", KNNSunDetector, "features", False, "Sun et al. 2022, k-th neighbour distance"),
    ("center", CenterDetector, "features", False, "1 - s_center, FIRM app. B eq. 7"),
    ("l2_norm", L2NormDetector, "features", False, "s_l2, OECL eq. 9 / 14"),
    ("gaussian", ClassConditionalGaussianDetector, "features", True, "CLP eq. 2"),
    ("mahalanobis", MahalanobisDetector, "features", True, "Lee et al. 2018, shared covariance"),
    ("patch_gaussian", PatchGaussianDetector, "patches", False, "worst-patch Mahalanobis, Lee et al. 2018 / "
     "PaDiM (patch features)"),
    ("patchcore", PatchCoreDetector, "patches", False, "PatchCore, Roth et al. 2022 (coreset memory bank, "
     "reweighted worst patch)"),
    ("kde", KDEDetector, "features", False, "-KDE_gamma, FIRM app. C eq. 8"),
    ("ocsvm", LinearOCSVMDetector, "features", False, "linear OC-SVM, FIRM app. C eq. 9-11"),
    ("msp", MSPDetector, "logits", False, "Hendrycks & Gimpel 2017"),
    ("energy", EnergyDetector, "logits", False, "Liu et al. 2020, T = 1"),
    ("maxlogit", MaxLogitDetector, "logits", False, "Hendrycks et al. 2022"),
    ("vim", ViMDetector, "features", False, "Wang et al. 2022 (needs weight=, bias=)"),
    ("s_mu", SMuDetector, "images", False, "s_mu, OECL eq. 10 / 16 (needs encoder=)"),
    ("l2_ens", L2EnsDetector, "images", False, "s_l2-ens, OECL eq. 15 (needs encoder=)"),
    ("sim_s_mu", SimPlusSMuDetector, "images", False, "sim + s_mu, OECL Table VI (needs encoder=)"),
    ("shift", ShiftDetector, "images", False, "s_shift, FIRM app. B eq. 5 (needs encoder=)"),
    ("ens", EnsDetector, "images", False, "s_ens, FIRM app. B eq. 6 (needs encoder=)"),
):
    register_detector(_name, _cls, _input, _labels, _reference)

declare_detector("conformal_set", "conformood.conformal.sets.detector:ConformalSetDetector", "features", True,
                 "CCS eq. 23 and section 6 (needs conformal_set=, a calibrated ConformalSet)",
                 "CCS eq. 23 as a detector. ``conformal_set`` must be calibrated; ``fit`` stores labelled ID "
                 "references.")


def list_detectors() -> list[str]:
    """Names accepted by :func:`get_detector`."""
    return DETECTORS.names()


def detector_info(name: str) -> Entry:
    """Input kind, label need and reference of a registered detector."""
    return DETECTORS.info(name)


def get_detector(name: str, **options: object) -> BaseDetector:
    """A new, unfitted detector by registry name; ``options`` are its constructor's parameters."""
    return DETECTORS.create(name, **options)


def detector_from_state(kind: object, tensors: dict, config: dict, source: str = "the file") -> BaseDetector:
    """Rebuild a registered detector of class name ``kind`` from its stored state (validated field by field)."""
    by_class = {DETECTORS.info(name).class_name: name for name in DETECTORS}
    if kind not in by_class:
        hint = (": a calibrated detector, which conformood.load (or ConformalDetector.load) reads"
                if kind == "ConformalDetector" else "")
        raise ValueError(f"{source} holds a {kind!r}, which is not a registered detector{hint}")
    return DETECTORS.get(by_class[kind])._from_state(tensors, config, source)


def load_detector(path: str | os.PathLike) -> BaseDetector:
    """Load any detector written by ``detector.save(path)``."""
    from ..io import load_artefact

    kind, tensors, config = load_artefact(path)
    return detector_from_state(kind, tensors, config, str(path))
