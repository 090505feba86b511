"""Conformal calibration: p-values, thresholds, guaranteed decisions, sets and risk control."""

from .detection.bh import benjamini_hochberg, benjamini_hochberg_exact
from .detection.detector import ConformalDetector
from .detection.ensemble import ConformalEnsemble, combine_p_values, compare_with_members
from .detection.pac import (
    conditional_bounds,
    conditional_p_values,
    pac_failure_probability,
    pac_min_calibration,
    pac_rank,
)
from .detection.split import (
    ConformalWarning,
    conformal_p_values,
    conformal_rank,
    conformal_threshold,
)
from .loading import load, load_detector
from .risk.control import adaptive_correction, crc_threshold, nonempty_masks
from .risk.sets import adaptive_sets, crc_sets, oracle_thresholds, per_image_thresholds
from .risk.threshold_training import ThresholdTraining, train_threshold_predictor
from .sets.base import ConformalSet, conformal_quantile
from .sets.detector import ConformalSetDetector
from .sets.families import (
    SET_FAMILIES,
    ConformalBall,
    GeneralizedMultiNormSet,
    MahalanobisEllipsoid,
    SingleNormSet,
    calibrate_labelled,
    load_conformal_set,
)
from .sets.sampling import TripletSampler, evaluate_set, pair_samples
from .sets.training import SetTrainingResult, train_conformal_set

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
