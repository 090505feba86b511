"""Figures shared by every report (matplotlib, written without a display)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..io import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, with a clear error when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_points(scores: np.ndarray, is_inlier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the ROC curve, in-distribution positive."""
    from ..metrics.ood import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(scores, dtype=np.float64), np.asarray(is_inlier, dtype=bool))
    return fpr, tpr


def _grid(n: int, min_width: float = 0.0):
    plt = pyplot()
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.2 * cols, min_width), 3.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return plt, fig, axes.flat


def plot_roc_grid(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], path: str | Path, title: str = "",
    min_width: float = 0.0,
) -> None:
    """One ROC panel per key of ``panels``; each maps a method name to (scores, is_inlier)."""
    plt, fig, axes = _grid(len(panels), min_width=min_width)
    for ax, (panel, curves) in zip(axes, panels.items()):
        for method, (scores, is_inlier) in curves.items():
            fpr, tpr = roc_points(scores, is_inlier)
            ax.plot(fpr, tpr, label=method, lw=1.5)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls=":")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("FPR (OOD accepted)", fontsize=8)
        ax.set_ylabel("TPR (inliers accepted)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_score_histograms(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str = "",
    min_width: float = 0.0,
) -> None:
    """Inlier vs OOD score histograms per panel (each group as a density), with the conformal threshold as a
    vertical line. The x-range spans the 0.5–99.5 % quantiles of both groups and the threshold, or, when a far
    OOD tail would squash the inliers, the range around the inliers and the threshold; how many scores lie
    outside the range shown is written in the panel."""
    plt, fig, axes = _grid(len(panels), min_width=min_width)
    for ax, (panel, (scores, is_inlier, threshold)) in zip(axes, panels.items()):
        scores = np.asarray(scores, dtype=np.float64)
        is_inlier = np.asarray(is_inlier, dtype=bool)
        groups = [g for g in (scores[is_inlier], scores[~is_inlier]) if g.size]
        lo = min(float(np.quantile(g, 0.005)) for g in groups)
        hi = max(float(np.quantile(g, 0.995)) for g in groups)
        if np.isfinite(threshold):
            lo, hi = min(lo, threshold), max(hi, threshold)
        inliers = scores[is_inlier]
        if inliers.size:  # a far OOD tail would squash the inliers: then show the range around the inliers
            i_lo, i_hi = float(np.quantile(inliers, 0.005)), float(np.quantile(inliers, 0.995))
            if np.isfinite(threshold):
                i_lo, i_hi = min(i_lo, threshold), max(i_hi, threshold)
            pad = 0.25 * max(i_hi - i_lo, 1e-12)
            if hi - lo > 8 * (i_hi - i_lo + 2 * pad):
                lo, hi = i_lo - pad, i_hi + pad
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 41)
        ax.hist(scores[~is_inlier], bins=bins, alpha=0.6, density=True, label="OOD", color="tab:red")
        ax.hist(scores[is_inlier], bins=bins, alpha=0.6, density=True, label="inlier", color="tab:blue")
        if np.isfinite(threshold):
            ax.axvline(threshold, color="black", lw=1.0, ls="--", label="threshold")
        outside = int(((scores < lo) | (scores > hi)).sum())
        if outside:
            ax.text(0.02, 0.97, f"{outside} score(s) outside the range shown (of {scores.size})",
                    transform=ax.transAxes, fontsize=7, va="top", bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("score (higher = more normal)", fontsize=8)
        ax.set_ylabel("density per group", fontsize=8)
        ax.legend(fontsize=7)
    if title:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(title, width=max(40, int(fig.get_figwidth() * 11)))), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_curves(
    curves: Mapping[str, Sequence[float]], path: str | Path, xlabel: str, ylabel: str, title: str = ""
) -> None:
    """Line plot of several named series against their index (e.g. training loss per epoch)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name, lw=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(curves) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """Write ``fig`` atomically (a reader never sees half a figure) and close it."""
    plt = pyplot()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


def plot_training_diagnostics(
    path: str | Path, norms: ArrayLike | None = None, aurocs: ArrayLike | None = None
) -> None:
    """Feature norms (inlier vs outlier) and AUROC per epoch, side by side, from a
    :class:`~conformood.train.FeatureNormCallback` and an :class:`~conformood.train.AUROCCallback`."""

    panels = [p for p in (norms, aurocs) if p is not None]
    if not panels:
        raise ValueError("nothing to plot: pass a FeatureNormCallback and/or an AUROCCallback")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        if hasattr(p, "inlier_norm"):
            ax.plot(p.epochs, p.inlier_norm, label="inliers")
            ax.plot(p.epochs, p.outlier_norm, label="outliers")
            ax.set_ylabel("mean ‖f(x)‖₂")
            ax.legend()
        else:
            ax.plot(p.epochs, p.aurocs)
            ax.set_ylabel("AUROC (s_con)")
            ax.set_title(f"AULC = {p.aulc:.3f}")
        ax.set_xlabel("epoch")
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion_dendrogram(linkage_matrix: np.ndarray, class_names: Sequence[str], path: str | Path) -> None:
    """The average-linkage dendrogram of the CLP confusion distances
    (:func:`conformood.metrics.confusion_dendrogram`), one leaf per class."""
    from scipy.cluster.hierarchy import dendrogram

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(class_names)), 4))
    dendrogram(linkage_matrix, labels=list(class_names), ax=ax, leaf_rotation=90)
    ax.set_ylabel("confusion distance d(i, j)")
    fig.tight_layout()
    save_figure(fig, path)
