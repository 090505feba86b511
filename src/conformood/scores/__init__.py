"""Detectors: ``fit(features, labels=None) -> self``, ``score_samples(features)``, higher = more normal."""

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
from .patch import PatchGaussianDetector, check_patch_features
from .patchcore import PatchCoreDetector, greedy_coreset
from .registry import (
    DETECTORS,
    DetectorInfo,
    detector_from_state,
    detector_info,
    get_detector,
    list_detectors,
    load_detector,
    register_detector,
)
from .simple import CenterDetector, L2NormDetector

__all__ = [
    "DETECTORS",
    "BaseDetector",
    "CenterDetector",
    "ClassConditionalGaussianDetector",
    "DetectorInfo",
    "EnergyDetector",
    "EnsDetector",
    "KDEDetector",
    "KNNCosineDetector",
    "KNNCosineNormDetector",
    "KNNSunDetector",
    "L2EnsDetector",
    "L2NormDetector",
    "LinearOCSVMDetector",
    "MSPDetector",
    "MahalanobisDetector",
    "PatchGaussianDetector",
    "PatchCoreDetector",
    "greedy_coreset",
    "check_patch_features",
    "MaxLogitDetector",
    "SMuDetector",
    "ShiftDetector",
    "SimPlusSMuDetector",
    "ViMDetector",
    "detector_info",
    "get_detector",
    "list_detectors",
    "detector_from_state",
    "load_detector",
    "register_detector",
]
