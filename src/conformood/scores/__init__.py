"""Detectors: ``fit(features, labels=None) -> self``, ``score_samples(features)``, higher = more normal."""

from .base import BaseDetector
from .knn import KNNCosineDetector

__all__ = ["BaseDetector", "KNNCosineDetector"]
