"""Conformal calibration: p-values, thresholds, guaranteed decisions, sets and risk control."""

from .bh import benjamini_hochberg, benjamini_hochberg_exact
from .detector import ConformalDetector
from .ensemble import ConformalEnsemble, combine_p_values, compare_with_members
from .loading import load, load_detector
from .pac import conditional_bounds, conditional_p_values, pac_failure_probability, pac_min_calibration, pac_rank
from .risk_control import adaptive_correction, crc_threshold, nonempty_masks
from .risk_sets import adaptive_sets, crc_sets, oracle_thresholds, per_image_thresholds
from .set_detector import ConformalSetDetector
from .set_families import (
    SET_FAMILIES,
    ConformalBall,
    GeneralizedMultiNormSet,
    MahalanobisEllipsoid,
    SingleNormSet,
    calibrate_labelled,
    load_conformal_set,
)
from .set_sampling import TripletSampler, evaluate_set, pair_samples
from .set_training import SetTrainingResult, train_conformal_set
from .sets import ConformalSet, conformal_quantile
from .split import (
    ConformalWarning,
    conformal_p_values,
    conformal_rank,
    conformal_threshold,
)
from .threshold_training import ThresholdTraining, train_threshold_predictor

__all__ = [
    "ConformalSetDetector",
    "load",
    "load_detector",
    "ConformalBall",
    "ConformalSet",
    "GeneralizedMultiNormSet",
    "MahalanobisEllipsoid",
    "calibrate_labelled",
    "SingleNormSet",
    "conformal_quantile",
    "load_conformal_set",
    "SET_FAMILIES",
    "SetTrainingResult",
    "ThresholdTraining",
    "TripletSampler",
    "train_threshold_predictor",
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
    "ConformalEnsemble",
    "combine_p_values",
    "compare_with_members",
    "conditional_bounds",
    "conditional_p_values",
    "pac_failure_probability",
    "pac_min_calibration",
    "pac_rank",
    "ConformalWarning",
    "benjamini_hochberg",
    "benjamini_hochberg_exact",
    "conformal_p_values",
    "conformal_rank",
    "conformal_threshold",
]
