"""Metrics: OOD detection (in-distribution positive) and conformal diagnostics."""

from .ood import (
    OODMetrics,
    aupr_in,
    aupr_out,
    auroc,
    detection_accuracy,
    flagged_rate,
    fpr_at_95_tpr,
    fpr_at_tpr,
    ood_metrics,
)

__all__ = [
    "OODMetrics",
    "aupr_in",
    "aupr_out",
    "auroc",
    "detection_accuracy",
    "flagged_rate",
    "fpr_at_95_tpr",
    "fpr_at_tpr",
    "ood_metrics",
]
