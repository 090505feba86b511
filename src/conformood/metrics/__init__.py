"""Metrics: OOD detection (in-distribution positive) and conformal diagnostics."""

from .clp import (
    classwise_clp,
    confusion_dendrogram,
    confusion_distances,
    confusion_log_probability,
    ensemble_predict,
    ensemble_probabilities,
    ood_rank,
)
from .decisions import decision_metrics
from .ood import (
    OODMetrics,
    aulc,
    aupr_in,
    aupr_out,
    auroc,
    detection_accuracy,
    flagged_rate,
    fpr_at_95_tpr,
    fpr_at_tpr,
    ood_metrics,
    roc_curve,
)
from .segmentation import (
    SegmentationRisk,
    coverage_gap,
    marginal_coverage,
    per_region_overlap,
    segmentation_risk,
)

__all__ = [
    "SegmentationRisk",
    "coverage_gap",
    "marginal_coverage",
    "segmentation_risk",
    "per_region_overlap",
    "classwise_clp",
    "confusion_dendrogram",
    "confusion_distances",
    "confusion_log_probability",
    "ensemble_predict",
    "ensemble_probabilities",
    "ood_rank",
    "decision_metrics",
    "roc_curve",
    "OODMetrics",
    "aulc",
    "aupr_in",
    "aupr_out",
    "auroc",
    "detection_accuracy",
    "flagged_rate",
    "fpr_at_95_tpr",
    "fpr_at_tpr",
    "ood_metrics",
]
