"""Conformal calibration: p-values, thresholds, sets and risk control."""

from .split import ConformalWarning, conformal_p_values, conformal_rank, conformal_threshold

__all__ = ["ConformalWarning", "conformal_p_values", "conformal_rank", "conformal_threshold"]
