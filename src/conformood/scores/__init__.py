"""Detectors: ``fit(features, labels=None) -> self``, ``score_samples(features)``, higher = more normal."""

from .base import BaseDetector
from .conformal_set import ConformalSetDetector
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
from .registry import (
    DetectorInfo,
    detector_info,
    get_detector,
    list_detectors,
    load_detector,
)
from .simple import CenterDetector, L2NormDetector

__all__ = [
    "ConformalSetDetector",
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
    "MaxLogitDetector",
    "SMuDetector",
    "ShiftDetector",
    "SimPlusSMuDetector",
    "ViMDetector",
    "detector_info",
    "get_detector",
    "list_detectors",
    "load_detector",
]
