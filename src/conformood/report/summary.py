"""Terminal summaries of results (the command prints them after a run)."""

from __future__ import annotations

from pathlib import Path

#: the demo table's columns: result key -> header (short, so that the table fits an 80-column terminal)
DEMO_COLUMNS = {"auroc": "AUROC", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out", "fpr95": "FPR@95",
                "detection_accuracy": "Det.acc", "realised_fpr_at_alpha": "FPR@α"}


def print_inspection_summary(result: dict, out: Path) -> None:
    """The inspection demo's AUROC per kind of defect and its decisions at α per method, within 80 columns."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    alpha = result["config"]["alpha"]
    table = Table(title=f"textile inspection, α = {alpha} (main: {result['main_method']})", box=box.SIMPLE_HEAD,
                  padding=(0, 1))
    for header in ("method", "AUROC loc", "AUROC glob", "AUROC all", "FPR@α", "caught@α"):
        table.add_column(header, justify="left" if header == "method" else "right", no_wrap=True)
    for method, r in result["results"].items():
        table.add_row(method, *(f"{r[k]['auroc']:.3f}" for k in ("local", "global", "all")),
                      f"{r['all']['realised_fpr_at_alpha']:.3f}", f"{r['all']['ood_flagged_at_alpha']:.3f}")
    console = Console()
    console.print(table)
    rep = result.get("resplits", {}).get("per_method", {}).get(result["main_method"])
    if rep:
        console.print(f"FPR@α: nominal test images flagged (target ≤ α); over {result['resplits']['n_splits']} "
                      f"calibration sets the main method's mean is {rep['mean_realised_fpr']:.3f}.")
    console.print(f"wall time {result['wall_time_s']:.1f} s; report: {out / 'report.md'}")


def print_demo_summary(result: dict, out: Path) -> None:
    """The demo's mean metrics per method as a table that fits 80 columns, then the wall time and report path."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mean over {len(result['per_class'])} class(es), α = {result['config']['alpha']}",
                  box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("method", no_wrap=True)
    for header in DEMO_COLUMNS.values():
        table.add_column(header, justify="right", no_wrap=True)
    for method, values in result["mean"].items():
        table.add_row(method, *(f"{values[k]:.3f}" for k in DEMO_COLUMNS))
    console = Console()
    console.print(table)
    console.print(f"FPR@α: realised false-alarm rate on test inliers at the conformal threshold (target ≤ α).\n"
                  f"wall time {result['wall_time_s']:.1f} s; report: {out / 'report.md'}")
