"""Render the demo's Markdown report and figures from its JSON results."""

from __future__ import annotations

import json
from pathlib import Path

from ..io import write_text
from .plots import plot_curves, plot_roc_grid, plot_score_histograms
from .provenance import provenance_markdown

_COLUMNS = (
    ("auroc", "AUROC"),
    ("aupr_in", "AUPR-In"),
    ("aupr_out", "AUPR-Out"),
    ("fpr95", "FPR@95TPR"),
    ("detection_accuracy", "Det. acc."),
    ("realised_fpr_at_alpha", "test FPR at α"),
    ("ood_flagged_at_alpha", "anomalies flagged at α"),
)


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def render_demo_report(out_dir: str | Path) -> Path:
    """Read ``metrics.json`` and ``scores.json`` in ``out_dir``; write ``report.md`` and the PNG figures."""
    out = Path(out_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    scores = json.loads((out / "scores.json").read_text())["scores"]
    methods = list(metrics["methods"])
    alpha = metrics["config"]["alpha"]

    plot_roc_grid(
        {f"class {c}": {m: (s[m]["test"], s["is_inlier"]) for m in methods} for c, s in scores.items()},
        out / "roc.png",
        title="ROC per in-distribution class (in-distribution positive)",
    )
    for m in methods:
        plot_score_histograms(
            {f"class {c}": (s[m]["test"], s["is_inlier"], s[m]["threshold"]) for c, s in scores.items()},
            out / f"histograms_{m}.png",
            title=f"{m}: test scores, conformal threshold at α = {alpha}",
        )
    plot_curves(metrics["training_loss"], out / "training_loss.png", "epoch", "FIRM loss", "training loss per class")

    lines = [
        "# conformood demo: one-vs-rest anomaly detection on digits",
        "",
        f"{metrics['task']}. Each class in turn is in-distribution; every other class is an anomaly.",
        "Metrics treat in-distribution as the positive class. The conformal threshold is calibrated on held-out",
        f"in-distribution images at α = {alpha}: an input is flagged when its score falls below it, which keeps",
        "P(flag an in-distribution input) ≤ α. *test FPR at α* is the realised fraction of test inliers flagged.",
        "",
        "Methods:",
        *[f"- **{m}**: {d}" for m, d in metrics["methods"].items()],
        "",
        "## Mean over classes",
        "",
        "| method | " + " | ".join(h for _, h in _COLUMNS) + " |",
        "|---|" + "---|" * len(_COLUMNS),
    ]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_fmt(metrics["mean"][m][k]) for k, _ in _COLUMNS) + " |")
    if "firm" in metrics["mean"] and "raw_pixels" in metrics["mean"]:
        gain = metrics["mean"]["firm"]["auroc"] - metrics["mean"]["raw_pixels"]["auroc"]
        verdict = "improved" if gain > 0 else "did not improve"
        lines += [
            "",
            f"Training {verdict} on the raw-pixel baseline: mean AUROC difference {gain:+.3f} (FIRM minus raw pixels).",
        ]
    lines += [
        "",
        "## Per class",
        "",
        "| class | n train / cal / test in / test out | "
        + " | ".join(f"{m} AUROC" for m in methods)
        + " | "
        + " | ".join(f"{m} test FPR at α" for m in methods)
        + " |",
        "|---|---|" + "---|" * (2 * len(methods)),
    ]
    for c, r in metrics["per_class"].items():
        counts = f"{r['n_train']} / {r['n_calibration']} / {r['n_test_inliers']} / {r['n_test_ood']}"
        lines.append(
            f"| {c} | {counts} | "
            + " | ".join(_fmt(r[m]["auroc"]) for m in methods)
            + " | "
            + " | ".join(_fmt(r[m]["realised_fpr_at_alpha"]) for m in methods)
            + " |"
        )
    lines += [
        "",
        f"Wall time: {metrics['wall_time_s']:.1f} s ({metrics['environment']['threads']} threads, "
        f"device {metrics['environment']['device']}).",
        "",
        "## Figures",
        "",
        "![ROC curves](roc.png)",
        "",
        *[f"![{m} score histograms](histograms_{m}.png)\n" for m in methods],
        "![training loss](training_loss.png)",
        "",
        *provenance_markdown(metrics.get("provenance")),
    ]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
