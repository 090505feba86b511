"""Reports: figures and Markdown rendered from JSON results."""

from .ccs import render_ccs
from .coat import render_coat
from .demo import render_demo_report
from .evaluation import render_evaluation
from .one_vs_rest import render_one_vs_rest
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
    "render_ccs",
    "render_coat",
    "render_demo_report",
    "render_evaluation",
    "render_one_vs_rest",
    "save_figure",
]
