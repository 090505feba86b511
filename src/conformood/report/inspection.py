"""Render the inspection demo's Markdown report and figures from its JSON results (and the anomaly maps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..io import write_text
from .plots import plot_roc_grid, plot_score_histograms, pyplot, save_figure
from .provenance import provenance_markdown

_KINDS = ("nominal", "local", "global")


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def plot_examples(images: np.ndarray, maps: np.ndarray, kinds: np.ndarray, flagged: np.ndarray, path: Path,
                  per_kind: int = 4) -> None:
    """For the first ``per_kind`` test images of each kind: the image, and beside it its patch anomaly map
    (squared Mahalanobis distance per patch) on one colour scale, titled with the decision at α."""
    plt = pyplot()
    side = int(round(math.sqrt(maps.shape[1])))
    rows = [np.flatnonzero(kinds == k)[:per_kind] for k in range(len(_KINDS))]
    fig, axes = plt.subplots(len(_KINDS), 2 * per_kind, figsize=(2.0 * 2 * per_kind, 2.2 * len(_KINDS)),
                             squeeze=False)
    top = float(np.quantile(maps, 0.999)) if maps.size else 1.0
    for r, idx in enumerate(rows):
        for c in range(per_kind):
            ax_img, ax_map = axes[r, 2 * c], axes[r, 2 * c + 1]
            ax_img.axis("off")
            ax_map.axis("off")
            if c >= idx.size:
                continue
            i = idx[c]
            ax_img.imshow(images[i, 0], cmap="gray", vmin=0, vmax=255)
            ax_img.set_title(f"{_KINDS[r]}: {'flagged' if flagged[i] else 'accepted'}", fontsize=8,
                             color="firebrick" if flagged[i] else "black")
            ax_map.imshow(maps[i].reshape(side, side), cmap="magma", vmin=0, vmax=top)
            ax_map.set_title("patch distance", fontsize=8)
    fig.suptitle("test images and their patch anomaly maps (combined method's decision at α)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def render_inspection_report(out_dir: str | Path, images: np.ndarray, maps: np.ndarray) -> Path:
    """Read ``metrics.json`` and ``scores.json`` in ``out_dir``; write ``report.md`` and the PNG figures.
    ``images`` (n_test, 1, h, w) and ``maps`` (n_test, n_patches) are the test images and their anomaly maps."""
    out = Path(out_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    scores = json.loads((out / "scores.json").read_text())["scores"]
    methods = list(metrics["methods"])
    main = metrics["main_method"]
    alpha = metrics["config"]["alpha"]
    kinds = np.asarray(scores["kind"])
    nominal = kinds == 0

    panels = {}
    for k, name in enumerate(_KINDS[1:], start=1):
        keep = nominal | (kinds == k)
        panels[f"{name} defects"] = {m: (np.asarray(scores[m]["test"])[keep], nominal[keep]) for m in methods}
    plot_roc_grid(panels, out / "roc.png", title="ROC: nominal test images against each kind of defect")
    plot_score_histograms(
        {m: (scores[m]["test"], nominal, scores[m]["threshold"]) for m in methods}, out / "histograms.png",
        title=f"test scores (nominal vs defects) and the conformal threshold at α = {alpha}", min_width=13.0,
    )
    plot_examples(images, maps, kinds, np.asarray(scores[main]["flagged"], dtype=bool), out / "examples.png")

    res = metrics["results"]
    baseline, best = res["raw_pixels"]["all"]["auroc"], res[main]["all"]["auroc"]
    counts = metrics["counts"]
    lines = [
        "# conformood demo: textile inspection with a pretrained backbone",
        "",
        f"{metrics['task']}. Data: {metrics['data']['package']} (MIT). Nominal images: {counts['train']} to fit, "
        f"{counts['calibration']} to calibrate, {counts['test_nominal']} to test; test defects: "
        f"{counts['test_local']} local, {counts['test_global']} global.",
        "",
        "Every method is calibrated on the held-out nominal images at α = "
        f"{alpha}: an image is flagged when its conformal p-value is ≤ α, which keeps P(flag a nominal image) ≤ α. "
        "*nominal flagged* is the realised fraction of nominal test images flagged; *defects flagged* is the "
        "fraction of defective images caught. AUROC treats nominal as the positive class.",
        "",
        "Methods (no training; the backbone is torchvision's ImageNet MobileNetV2, frozen):",
        *[f"- **{m}**{' (main)' if m == main else ''}: {d}" for m, d in metrics["methods"].items()],
        "",
        "| method | AUROC local | AUROC global | AUROC all | FPR@95TPR all | nominal flagged | local flagged "
        "| global flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        r = res[m]
        lines.append(f"| {m} | {_fmt(r['local']['auroc'])} | {_fmt(r['global']['auroc'])} | {_fmt(r['all']['auroc'])}"
                     f" | {_fmt(r['all']['fpr95'])} | {_fmt(r['all']['realised_fpr_at_alpha'])} | "
                     f"{_fmt(r['local']['ood_flagged_at_alpha'])} | {_fmt(r['global']['ood_flagged_at_alpha'])} |")
    verdict = "beats" if best > baseline else "does not beat"
    lines += [
        "",
        f"The main method {verdict} the raw-pixel baseline: AUROC {best:.3f} against {baseline:.3f} on all defects. "
        "Pooled features alone see the global defects; the patch features alone see the local ones; the "
        "calibrated combination sees both and keeps the false-alarm guarantee.",
    ]
    rep = metrics.get("resplits", {})
    if rep.get("per_method"):
        lines += [
            "",
            f"## The guarantee over {rep['n_splits']} calibration sets",
            "",
            "The table above is one calibration set. The guarantee is a statement on average over calibration sets: "
            f"here the held-out nominal images are re-split {rep['n_splits']} times at random into calibration "
            "and test parts of the same sizes and every method recalibrated (detectors stay fitted).",
            "",
            f"| method | mean nominal flagged (target ≤ {alpha}) | 95th percentile | mean defects flagged |",
            "|---|---|---|---|",
            *[f"| {m} | {_fmt(v['mean_realised_fpr'])} | {_fmt(v['q95_realised_fpr'])} | "
              f"{_fmt(v['mean_defects_flagged'])} |" for m, v in rep["per_method"].items()],
        ]
    lines += [
        "",
        f"Wall time: {metrics['wall_time_s']:.1f} s ({metrics['environment']['threads']} threads, "
        f"device {metrics['environment']['device']}).",
        "",
        "## Figures",
        "",
        "The main method is an inspector (`inspector.safetensors`), built as `conformood inspect fit` builds it "
        "and applied as `conformood inspect run` applies it; every test image's decision, p-value and overlay: "
        "[inspection/report.html](inspection/report.html) and `inspection/results.csv`. The same inspector from a "
        "folder of good images:",
        "",
        f"    {metrics['inspector']['command']}" if "inspector" in metrics else "",
        "",
        "![examples](examples.png)",
        "",
        "![ROC curves](roc.png)",
        "",
        "![score histograms](histograms.png)",
        "",
        *provenance_markdown(metrics.get("provenance")),
    ]
    path = out / "report.md"
    write_text(path, "\n".join(lines))
    return path
