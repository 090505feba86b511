"""Conformal calibration: p-values, thresholds, guaranteed decisions, sets and risk control."""

from .bh import benjamini_hochberg
from .detector import ConformalDetector
from .risk_control import (
    adaptive_correction,
    adaptive_sets,
    crc_sets,
    crc_threshold,
    nonempty_masks,
    oracle_thresholds,
    per_image_thresholds,
)
from .set_training import evaluate_set, pair_samples, train_conformal_set
from .sets import (
    ConformalBall,
    ConformalSet,
    GeneralizedMultiNormSet,
    MahalanobisEllipsoid,
    SingleNormSet,
    conformal_quantile,
)
from .split import ConformalWarning, conformal_p_values, conformal_rank, conformal_threshold

__all__ = [
    "ConformalBall",
    "ConformalSet",
    "GeneralizedMultiNormSet",
    "MahalanobisEllipsoid",
    "SingleNormSet",
    "conformal_quantile",
    "evaluate_set",
    "pair_samples",
    "train_conformal_set",
    "adaptive_correction",
    "adaptive_sets",
    "crc_sets",
    "crc_threshold",
    "nonempty_masks",
    "oracle_thresholds",
    "per_image_thresholds",
    "ConformalDetector",
    "ConformalWarning",
    "benjamini_hochberg",
    "conformal_p_values",
    "conformal_rank",
    "conformal_threshold",
]
