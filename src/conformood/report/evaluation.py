"""The report of ``conformood evaluate``: Markdown, HTML and figures, from ``evaluation.json`` and
``test_scores.npz``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import write_text
from .html import render_html
from .plots import plot_roc_grid, plot_score_histograms, pyplot, save_figure
from .provenance import provenance_markdown, provenance_rows


def render_evaluation(out_dir: str | os.PathLike) -> None:
    """Render ``evaluation.md``, ``report.html`` and the figures from ``evaluation.json``."""
    import json

    out = Path(out_dir)
    r = json.loads((out / "evaluation.json").read_text())
    with np.load(out / "test_scores.npz", allow_pickle=False) as z:
        scores, p, inl = z["scores"], z["p_values"], z["is_inlier"]
    plot_roc_grid({r["detector"]: {r["detector"]: (scores, inl)}}, out / "roc.png", "ROC (in-distribution positive)",
                  min_width=6.0)
    threshold = r["threshold"] if r.get("threshold") is not None else float("nan")
    plot_score_histograms({r["detector"]: (scores, inl, threshold)}, out / "score_histogram.png",
                          f"test scores; marginal conformal threshold at α = {r['alpha']}", min_width=8.0)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].hist(p[inl], bins=20, range=(0, 1), color="tab:blue", alpha=0.8)
    axes[0].set_title("p-values of test inliers (≈ uniform)")
    axes[0].set_xlabel("conformal p-value")
    axes[0].set_ylabel("number of test inliers")
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

    params = r.get("detector_params", r["options"])
    source = r.get("feature_source") or {}
    covers = ""
    if source.get("kind") == "model" and "protocol" in source:
        covers = f" Features of the model `{source['model']}` on `{source['data']}`, protocol `{source['protocol']}`."
    elif source.get("kind") == "backbone":
        weights = source.get("weights") or "random initialisation (seed 0)"
        covers = (f" Features of the frozen backbone `{source['backbone']}` (weights `{weights}`, "
                  f"{source['input_size'][0]} px input)"
                  + (f" on `{source['data']}`, protocol `{source['protocol']}`." if "protocol" in source else "."))
    setup = (
        f"Detector `{r['detector']}` ({r['reference']}) with parameters "
        f"{', '.join(f'`{k}={v}`' for k, v in params.items()) or 'none'}; {r['n_train']} training, "
        f"{r['n_calibration']} calibration, {r['n_test_inliers']} test inliers and {r['n_test_ood']} test OOD "
        f"samples. α = {r['alpha']}{' (Mondrian, per class)' if r['mondrian'] else ''}.{covers}"
    )
    meaning = ("Metrics take in-distribution as the positive class. `realised_fpr_at_alpha` is the fraction of test "
               "inliers flagged (guaranteed ≤ α in expectation); `bh_*` describe Benjamini–Hochberg selection at "
               "level α (false discovery proportion and power among the OOD samples).")
    if r.get("pac"):
        meaning += (f" With δ = {r['pac']['delta']} the flags and BH follow the calibration-conditional rule: with "
                    "probability ≥ 1 − δ over the draw of the calibration set, its false-alarm rate is ≤ α (BH on "
                    "Simes-adjusted p-values).")
    figures = [
        (out / "roc.png", "ROC curve on the test set, in-distribution as the positive class."),
        (out / "score_histogram.png", "Test scores of inliers and OOD samples, with the conformal threshold at α."),
        (out / "guarantee.png", "Left: p-values of test inliers (uniform when the guarantee holds). Right: the "
                                "realised false-alarm rate against the target α."),
    ]
    pac_rows = _pac_rows(r.get("pac"))
    pac_header = ["rule", "group", "n", "rank k", "threshold", "P_cal(FPR > α)", "realised FPR", "OOD flagged"]
    pac_lines = ([f"Calibration-conditional rule at δ = {r['pac']['delta']} (at least {r['pac']['min_calibration']} "
                  "calibration scores per group needed):", "", "| " + " | ".join(pac_header) + " |",
                  "|" + "---|" * len(pac_header), *["| " + " | ".join(row) + " |" for row in pac_rows], ""]
                 if pac_rows else [])
    lines = [
        f"# conformood evaluation: {r['detector']}",
        "",
        setup,
        "",
        meaning,
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {fmt(r[k])} |" for k in keys],
        "",
        *pac_lines,
        *[f"![{caption}]({fig.name})\n\n*{caption}*\n" for fig, caption in figures],
        *provenance_markdown(r.get("provenance")),
    ]
    write_text(out / "evaluation.md", "\n".join(lines))
    render_html(
        f"conformood evaluation: {r['detector']}",
        [("Set-up", setup), ("Reading the numbers", meaning)],
        [("Metrics", ["metric", "value"], [[f"`{k}`", fmt(r[k])] for k in keys])]
        + ([("Marginal and calibration-conditional (PAC) rules", pac_header, pac_rows)] if pac_rows else []),
        figures,
        out / "report.html",
        provenance_rows=provenance_rows(r.get("provenance")),
    )


def _pac_rows(pac: dict | None) -> list[list[str]]:
    """Table rows of ``evaluation.json``'s ``pac`` block: one per rule and calibration group."""
    if not pac:
        return []

    def num(v: object, digits: int = 4) -> str:
        return "–" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)

    rows = []
    for rule in ("marginal", "pac"):
        block = pac[rule]
        for group, g in block["groups"].items():
            rows.append([rule, "all" if group == "-1" else group, str(g["n"]), str(g["rank"]), num(g["threshold"]),
                         num(g["p_fpr_above_alpha"], 3), num(block["realised_fpr"]), num(block["ood_flagged"])])
    return rows
