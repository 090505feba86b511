"""Conformal calibration: p-values, thresholds, guaranteed decisions, sets and risk control."""

from .bh import benjamini_hochberg
from .detector import ConformalDetector
from .split import ConformalWarning, conformal_p_values, conformal_rank, conformal_threshold

__all__ = [
    "ConformalDetector",
    "ConformalWarning",
    "benjamini_hochberg",
    "conformal_p_values",
    "conformal_rank",
    "conformal_threshold",
]
