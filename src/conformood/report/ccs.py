"""The report of ``conformood reproduce ccs-sim``: Table 1 of the contrastive conformal sets paper, from
``ccs_sim.json``."""

from __future__ import annotations

import os
from pathlib import Path

from ..io import write_text
from .provenance import provenance_markdown


def render_ccs(payload: dict, out_dir: str | os.PathLike) -> None:
    """Write ``ccs_sim.md`` from the result of :func:`conformood.experiments.ccs.run_ccs_sim`."""
    write_text(Path(out_dir) / "ccs_sim.md", render_ccs_markdown(payload))


def render_ccs_markdown(payload: dict) -> str:
    cfg = payload["config"]
    lines = [
        "# Contrastive conformal sets on the 3-D mixed clusters (Table 1)",
        "",
        f"{cfg['seeds']} seed(s) from {cfg['seed_offset']}; α = {cfg['alpha']}, "
        f"{cfg['pairs_per_anchor']} pairs per anchor, {cfg['epochs']} epochs, "
        f"SGD lr {cfg['lr']} (momentum {cfg['momentum']}), batch {cfg['batch_size']}, clip {cfg['clip']}, "
        f"λ = {cfg['lam']}, "
        f"steepness {cfg['steepness']}, quantile {'detached' if cfg['detach_quantile'] else 'differentiated'}. "
        "Mean ± std over seeds; the paper's Table 1 (40 seeds) beside it.",
        "",
        "| Method | Coverage | Exclusion ↑ | LogVol ↓ | paper Coverage | paper Exclusion | paper LogVol |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in payload["methods"].items():
        paper = payload["paper_table1"][label]
        pc, pe, pv = paper["coverage_pct"], paper["exclusion_pct"], paper["log_volume"]
        lines.append(
            f"| {label} | {100 * r['coverage']['mean']:.1f} ± {100 * r['coverage']['std']:.1f}% "
            f"| {100 * r['exclusion']['mean']:.1f} ± {100 * r['exclusion']['std']:.1f}% "
            f"| {r['log_volume']['mean']:.2f} ± {r['log_volume']['std']:.2f} "
            f"| {pc[0]:.1f} ± {pc[1]:.1f}% | {pe[0]:.1f} ± {pe[1]:.1f}% | {pv[0]:.2f} ± {pv[1]:.2f} |"
        )
    lines += ["", f"Wall time {payload['wall_time_s']:.0f} s with {cfg['workers']} worker process(es).", ""]
    lines += ["", *provenance_markdown(payload.get("provenance"))]
    return "\n".join(lines)
