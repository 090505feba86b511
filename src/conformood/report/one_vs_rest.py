"""The report of the one-vs-rest benchmarks (``benchmarks/*_one_vs_rest.py``): a Markdown table and a bar chart
of AUROC per class and method, from the gathered JSON."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io import write_text
from .plots import pyplot, save_figure


def render_one_vs_rest(out: dict, results: dict, methods: Sequence[str], labels: dict, out_dir: str | os.PathLike,
                       name: str, notes: Sequence[str] = ()) -> None:
    """Write ``{name}.md`` and ``{name}_auroc.png`` for the classes in ``results`` where every method finished."""
    out_dir = Path(out_dir)
    write_text(out_dir / f"{name}.md", one_vs_rest_markdown(out, results, methods, labels, f"{name}_auroc.png", notes))
    plot_one_vs_rest(out_dir / f"{name}_auroc.png", out, results, methods, labels)


def one_vs_rest_markdown(out: dict, results: dict, methods: Sequence[str], labels: dict, figure: str,
                         notes: Sequence[str] = ()) -> str:
    """The Markdown table: AUROC per class and method (best in bold), means, FPR@95TPR and s_l2 AUROC."""
    cfg, cols = out["config"], ["raw_pixels", *methods]
    lines = [
        f"# {out['benchmark']}", "", out["description"], "",
        f"{cfg['epochs']} epochs on {cfg['n_train']} training images of the normal class (the same images and "
        f"initial weights for every method), batch {cfg['batch_size']}, peak lr {cfg['lr']} (warm-up + cosine), "
        f"crops of at least {cfg['crop_scale_min']:.0%} of the area, weight decay {cfg['weight_decay']}, seed "
        f"{cfg['seed']}. Score s_con with k = {cfg['k']} on the encoder's features; AUROC with the normal class "
        "as positive. Full per-run settings in the JSON (`train_configs`).", "",
        f"Training time {out['train_seconds_total'] / 60:.0f} min summed over the runs "
        f"({', '.join(map(str, out['environment']['threads_per_run']))} CPU thread(s) per run); "
        + (f"{out['wall_time_s'] / 60:.0f} min from the first run's start to the last one's end."
           if out["wall_time_s"] <= 2 * out["train_seconds_total"] else
           "the runs were made at different times, so their wall-clock span is not a run time."), "",
        "| class | " + " | ".join(labels.get(m, m) for m in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for cname, r in results.items():
        best = max(r[m]["auroc"] for m in cols)
        lines.append(f"| {cname} | " + " | ".join(
            f"**{r[m]['auroc']:.3f}**" if r[m]["auroc"] == best else f"{r[m]['auroc']:.3f}" for m in cols) + " |")
    mean = out["mean"]
    top = max(mean[m]["auroc"] for m in cols)
    lines.append("| **mean AUROC** | " + " | ".join(
        f"**{mean[m]['auroc']:.4f}**" if mean[m]["auroc"] == top else f"{mean[m]['auroc']:.4f}" for m in cols) + " |")
    lines.append("| mean FPR@95TPR | " + " | ".join(f"{mean[m]['fpr95']:.3f}" for m in cols) + " |")
    s_l2 = " | ".join(f"{mean[m]['s_l2_auroc']:.3f}" for m in methods)
    lines.append(f"| mean AUROC of s_l2 (‖projection‖) | – | {s_l2} |")
    lines += ["", f"![AUROC per class]({figure})", ""]
    if notes:
        lines += [*notes, ""]
    return "\n".join(lines)


def plot_one_vs_rest(path: str | os.PathLike, out: dict, results: dict, methods: Sequence[str], labels: dict) -> None:
    """AUROC per class, one bar per method, with each method's mean in the legend."""
    plt = pyplot()
    cols, names = ["raw_pixels", *methods], list(results)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(names) + 2), 3.8))
    width = 0.8 / len(cols)
    for i, m in enumerate(cols):
        ax.bar(np.arange(len(names)) + (i - (len(cols) - 1) / 2) * width, [results[n][m]["auroc"] for n in names],
               width, label=f"{labels.get(m, m)} (mean {out['mean'][m]['auroc']:.3f})")
    ax.set_xticks(np.arange(len(names)), names, rotation=20)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel(f"AUROC (s_con, k = {out['config']['k']})")
    ax.set_title(out["benchmark"])
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
