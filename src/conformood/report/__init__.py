"""Reports: figures and Markdown rendered from JSON results."""

from .demo import render_demo_report
from .plots import (
    plot_confusion_dendrogram,
    plot_curves,
    plot_roc_grid,
    plot_score_histograms,
    plot_training_diagnostics,
    pyplot,
    save_figure,
)

__all__ = [
    "plot_confusion_dendrogram",
    "plot_curves",
    "plot_roc_grid",
    "plot_score_histograms",
    "plot_training_diagnostics",
    "pyplot",
    "render_demo_report",
    "save_figure",
]
