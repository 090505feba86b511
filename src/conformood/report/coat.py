"""The report of ``conformood reproduce coat``: the CRC / AT / COAT table and figures, from ``coat.json`` (and
the overlay examples the experiment picks)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import write_text
from .plots import plot_curves, pyplot, save_figure
from .provenance import provenance_markdown

METHODS = ("CRC", "AT", "COAT")


def render_coat(payload: dict, out_dir: str | os.PathLike, overlays: dict | None = None) -> None:
    """Write ``coat.md``, ``coverage_gap_boxplot.png``, ``coat_training_loss.png`` and, for each α in
    ``overlays`` ({α: images, truth, CRC and COAT sets}), ``overlays_alpha{α}.png``."""
    out = Path(out_dir)
    _write_figures(out, payload, overlays or {})
    write_text(out / "coat.md", render_coat_markdown(payload))


def render_coat_markdown(payload: dict) -> str:
    """Markdown table of ``coat.json`` (mean ± std over splits)."""
    cfg = payload["config"]
    d = payload["data"]
    alphas = list(payload["results"])
    lines = [
        "# CRC, AT and COAT: marginal coverage and coverage gap",
        "",
        f"Data: {d['source']}"
        + (f" (class {d['class']})" if "class" in d else "")
        + f"; base model trained on {d['base_train_images']} images; {d['held_out_used']} held-out images with a "
        f"non-empty mask ({d['held_out_empty_masks_dropped']} dropped for an empty mask), split "
        f"{d['split_sizes']['evaluation']} / {d['split_sizes']['threshold_training']} / "
        f"{d['split_sizes']['calibration']} "
        f"(evaluation / threshold training / calibration) over {cfg['splits']} random splits.",
        "",
        "| Method | " + " | ".join(f"α={a} coverage | α={a} gap | α={a} set size" for a in alphas) + " |",
        "|---|" + "---|---|---|" * len(alphas),
    ]
    for method in METHODS:
        cells = []
        for a in alphas:
            r = payload["results"][a][method]
            cells += [
                f"{r['marginal_coverage']['mean']:.3f} ({r['marginal_coverage']['std']:.3f})",
                f"{r['coverage_gap']['mean']:.3f} ({r['coverage_gap']['std']:.3f})",
                f"{r['set_size']['mean']:.3f}",
            ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Mean (std) over splits. " + payload["paper"], ""]
    timed = payload.get("split_wall_time_s")
    if timed and timed["splits_timed"]:
        untimed = (f" ({timed['splits_untimed']} earlier splits were recorded without a time)"
                   if timed["splits_untimed"] else "")
        env = payload.get("environment") or {}
        where = f" on {env['threads']} CPU thread(s)" if env.get("threads") else ""  # COAT runs on the CPU
        lines += [f"Wall time of the splits: {timed['total'] / 60:.1f} min over {timed['splits_timed']} "
                  f"splits{where}{untimed}.", ""]
    for a in alphas:
        gaps = {m: payload["results"][a][m]["coverage_gap"]["mean"] for m in METHODS}
        cov = payload["results"][a]["COAT"]["marginal_coverage"]["mean"]
        lo, hi = 1 - float(a) - 0.02, 1 - float(a) + 0.03
        lines.append(
            f"- α = {a}: COAT gap {gaps['COAT']:.3f} vs CRC {gaps['CRC']:.3f} "
            f"({'below' if gaps['COAT'] < gaps['CRC'] else 'NOT below'}); COAT coverage {cov:.3f} "
            f"({'inside' if lo <= cov <= hi else 'OUTSIDE'} [{lo:.2f}, {hi:.2f}])."
        )
        paired = [_paired(payload["results"][a], first, second) for first, second in (("COAT", "AT"), ("AT", "CRC"))]
        if all(paired):
            lines.append(f"  Paired over the same splits (the paper's ordering is COAT < AT < CRC): {paired[0]}; "
                         f"{paired[1]}.")
    lines += ["", "Figures: `coverage_gap_boxplot.png`, `coat_training_loss.png`, `overlays_alpha*.png`.", ""]
    lines += ["", *provenance_markdown(payload.get("provenance"))]
    return "\n".join(lines)


def _paired(by_method: dict, first: str, second: str) -> str:
    """``first`` − ``second`` coverage gap over the splits both ran: mean ± standard error, and in how many
    splits ``first`` is the smaller (an empty string when the per-split gaps are not recorded)."""
    a, b = (by_method[m].get("per_split_coverage_gap") for m in (first, second))
    if not a or not b or len(a) != len(b):
        return ""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    se = diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else float("nan")
    return (f"{first} − {second} = {diff.mean():+.4f} ± {se:.4f} (standard error), {first} smaller in "
            f"{int((diff < 0).sum())} of {diff.size} splits")


def _write_figures(out: Path, payload: dict, overlays: dict) -> None:
    plt = pyplot()
    alphas = list(payload["results"])
    coat_losses = payload.get("coat_training_loss") or {}
    fig, axes = plt.subplots(1, len(alphas), figsize=(4.5 * len(alphas), 3.6), squeeze=False)
    for ax, key in zip(axes[0], alphas):
        data = [payload["results"][key][m]["per_split_coverage_gap"] for m in METHODS]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(METHODS) + 1), METHODS)
        ax.set_title(f"coverage gap, α = {key}")
        ax.set_ylabel("mean |TPR − (1 − α)|")
    fig.tight_layout()
    save_figure(fig, out / "coverage_gap_boxplot.png", dpi=120)
    if coat_losses:
        plot_curves(
            {f"α = {k}": v for k, v in coat_losses.items()},
            out / "coat_training_loss.png",
            xlabel="epoch",
            ylabel="L_COAT (mean over D_2)",
            title="COAT training loss (split 0)",
        )
    for key, ex in overlays.items():
        _overlay_figure(out / f"overlays_alpha{key}.png", float(key), ex)


def _overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """True positives white, false negatives red, false positives cyan, on a dimmed image."""
    rgb = image.astype(np.float32) / 255.0 * 0.45
    rgb[pred & truth] = (1.0, 1.0, 1.0)
    rgb[~pred & truth] = (1.0, 0.0, 0.0)
    rgb[pred & ~truth] = (0.0, 0.9, 0.9)
    return rgb


def _overlay_figure(path: Path, alpha: float, ex: dict) -> None:
    plt = pyplot()
    n = len(ex["images"])
    fig, axes = plt.subplots(3, n, figsize=(2.4 * n, 6.0), squeeze=False)
    for col in range(n):
        image, truth = ex["images"][col], ex["truth"][col]
        axes[0, col].imshow(image)
        for row, name in enumerate(("CRC", "COAT"), start=1):
            sets = ex[name][col]
            fnr = 1.0 - np.count_nonzero(sets & truth) / np.count_nonzero(truth)
            axes[row, col].imshow(_overlay(image, sets, truth))
            # inside its own panel, so that no caption can be read as the neighbouring row's
            axes[row, col].text(0.02, 0.97, f"{name} FNR {fnr:.3f}", transform=axes[row, col].transAxes,
                                ha="left", va="top", fontsize=8, color="white",
                                bbox={"facecolor": "black", "alpha": 0.65, "edgecolor": "none", "pad": 1.5})
        for row in range(3):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    for row, name in enumerate(("image", "CRC", "COAT")):
        axes[row, 0].set_ylabel(name, fontsize=10)
    fig.suptitle(f"CRC vs COAT at α = {alpha:g} (white TP, red FN, cyan FP)")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
