"""Reports: figures and Markdown rendered from JSON results."""

from .demo import render_demo_report
from .plots import plot_curves, plot_roc_grid, plot_score_histograms

__all__ = ["plot_curves", "plot_roc_grid", "plot_score_histograms", "render_demo_report"]
