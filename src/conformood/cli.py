"""The ``conformood`` command: it parses arguments and calls the library, nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="conformood",
    help="Contrastive OOD and anomaly detection with conformal guarantees.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """Contrastive OOD and anomaly detection with conformal guarantees."""


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, report.md and the figures.")] = Path(
        "demo-output"
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per class.")] = 40,
    classes: Annotated[
        list[str] | None, typer.Option("--classes", help="In-distribution classes (repeat or space-separate); default all 10.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and the augmentations.")] = 0,
    alpha: Annotated[float, typer.Option(help="Target false-alarm rate of the conformal threshold, in (0, 1).")] = 0.1,
    device: Annotated[str, typer.Option(help="'cpu', 'cuda' or 'auto'.")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """One-vs-rest anomaly detection on scikit-learn's digits: FIRM + s_con + conformal threshold."""
    import torch

    from .experiments import DemoConfig, run_demo

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [c for item in (classes or []) for c in item.replace(",", " ").split()]
    try:
        config = DemoConfig(epochs=epochs, seed=seed, alpha=alpha, device=device, **({"classes": names} if names else {}))
        result = run_demo(out, config, progress=progress)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _print_summary(result, out)


def _print_summary(result: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mean over {len(result['per_class'])} class(es), α = {result['config']['alpha']}")
    keys = ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_accuracy", "test_fpr_at_alpha")
    table.add_column("method")
    for k in keys:
        table.add_column(k, justify="right")
    for method, values in result["mean"].items():
        table.add_row(method, *(f"{values[k]:.3f}" for k in keys))
    console = Console()
    console.print(table)
    console.print(f"wall time {result['wall_time_s']:.1f} s; report: {out / 'report.md'}")


if __name__ == "__main__":  # pragma: no cover
    app()
