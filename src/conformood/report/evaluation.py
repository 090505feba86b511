"""The report of ``conformood evaluate``: Markdown, HTML and figures, from ``evaluation.json`` and
``test_scores.npz``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import write_text
from .html import render_html
from .plots import plot_roc_grid, plot_score_histograms, pyplot, save_figure


def render_evaluation(out_dir: str | os.PathLike) -> None:
    """Render ``evaluation.md``, ``report.html`` and the figures from ``evaluation.json``."""
    import json

    out = Path(out_dir)
    r = json.loads((out / "evaluation.json").read_text())
    with np.load(out / "test_scores.npz", allow_pickle=False) as z:
        scores, p, inl = z["scores"], z["p_values"], z["is_inlier"]
    plot_roc_grid({r["detector"]: {r["detector"]: (scores, inl)}}, out / "roc.png", "ROC (in-distribution positive)")
    threshold = r["threshold"] if r.get("threshold") is not None else float("nan")
    plot_score_histograms({r["detector"]: (scores, inl, threshold)}, out / "score_histogram.png",
                          f"test scores; marginal conformal threshold at α = {r['alpha']}")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].hist(p[inl], bins=20, range=(0, 1), color="tab:blue", alpha=0.8)
    axes[0].set_title("p-values of test inliers (≈ uniform)")
    axes[0].set_xlabel("conformal p-value")
    curve = r["realised_fpr_curve"]
    axes[1].plot(curve["alpha"], curve["fpr"], label="realised FPR on test inliers")
    axes[1].plot([0, 0.5], [0, 0.5], ls=":", color="grey", label="target α")
    axes[1].set_xlabel("α")
    axes[1].set_ylabel("fraction of inliers flagged")
    axes[1].legend()
    fig.tight_layout()
    save_figure(fig, out / "guarantee.png")

    keys = ["auroc", "aupr_in", "aupr_out", "fpr95", "detection_accuracy", "realised_fpr_at_alpha",
            "ood_flagged_at_alpha", "bh_discoveries", "bh_fdp", "bh_power"]
    def fmt(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        f"# conformood evaluation: {r['detector']}",
        "",
        f"Detector `{r['detector']}` ({r['reference']}), options {r['options']}; "
        f"{r['n_train']} training, {r['n_calibration']} calibration, {r['n_test_inliers']} test inliers and "
        f"{r['n_test_ood']} test OOD samples. α = {r['alpha']}{' (Mondrian, per class)' if r['mondrian'] else ''}.",
        "Metrics take in-distribution as the positive class. `realised_fpr_at_alpha` is the fraction of test",
        "inliers flagged (guaranteed ≤ α in expectation); `bh_*` describe Benjamini–Hochberg selection at level α",
        "(false discovery proportion and power among the OOD samples).",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {fmt(r[k])} |" for k in keys],
        "",
        "![ROC](roc.png)",
        "",
        "![scores](score_histogram.png)",
        "",
        "![guarantee](guarantee.png)",
        "",
    ]
    write_text(out / "evaluation.md", "\n".join(lines))
    render_html(
        f"conformood evaluation: {r['detector']}",
        [("Set-up", lines[2] + " " + lines[3] + " " + lines[4] + " " + lines[5])],
        [("Metrics", ["metric", "value"], [[k, fmt(r[k])] for k in keys])],
        [out / "roc.png", out / "score_histogram.png", out / "guarantee.png"],
        out / "report.html",
    )


