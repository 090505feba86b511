"""The figure of ``conformood monitor``: the martingale path against the alarm level."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .plots import pyplot, save_figure


def plot_martingale(log_martingale: Sequence[float], delta: float, batch_starts: Sequence[int],
                    alarm_time: int | None, path: str | Path, title: str = "") -> None:
    """log10 of the test martingale per input, the alarm level log10(1/δ), the batch boundaries and the alarm."""
    plt = pyplot()
    log10_m = np.asarray(log_martingale, dtype=float) / math.log(10)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    t = np.arange(1, log10_m.size + 1)
    for start in list(batch_starts)[1:]:
        ax.axvline(start + 0.5, color="0.85", lw=0.8, zorder=0)
    ax.plot(t, log10_m, lw=1.2, color="tab:blue", label="test martingale")
    level = math.log10(1 / delta)
    ax.axhline(level, color="tab:red", ls="--", lw=1, label=f"alarm level 1/δ = {1 / delta:g}")
    if alarm_time is not None:
        ax.plot([alarm_time + 1], [log10_m[alarm_time]], "o", color="tab:red", label=f"alarm at input {alarm_time + 1}")
    ax.set_xlabel("input (arrival order; grey lines separate batches)")
    ax.set_ylabel("log10 martingale")
    ax.set_title(title or "Conformal test martingale")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)
