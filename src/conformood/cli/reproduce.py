"""``conformood reproduce``: the papers' experiments, each writing JSON + Markdown + figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._boundary import config, fail, former_spelling, prepare_output, run_experiment
from .app import Command, Group, app

PROGRESS_HELP = "Show progress bars."
OVERWRITE_HELP = "Replace the results of an earlier run in OUT (otherwise such a folder is refused)."

reproduce_app = typer.Typer(help="Reproduce a paper's experiment and write JSON + Markdown + figures.",
                            no_args_is_help=True, cls=Group)
app.add_typer(reproduce_app, name="reproduce")


@reproduce_app.command("coat", cls=Command,
                       context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def reproduce_coat(
    ctx: typer.Context,
    data: Annotated[
        str,
        typer.Option(
            help="'camvid' (../shared/data or $CONFORMOOD_DATA), a .npz with x and y, or a folder with images/ "
            "and masks/."
        ),
    ] = "camvid",
    class_name: Annotated[
        str, typer.Option("--class", help="CamVid class name or label id (default car = 8).")
    ] = "car",
    alpha: Annotated[
        list[str] | None,
        typer.Option(help="Target FNR level(s): --alpha 0.1 0.2, --alpha 0.1 --alpha 0.2 or '0.1,0.2'."),
    ] = None,
    splits: Annotated[int, typer.Option(min=1, help="Random evaluation / training / calibration splits.")] = 20,
    out: Annotated[Path, typer.Option(help="Folder for coat.json, coat.md, figures and the cached base model.")] = Path(
        "coat-output"
    ),
    data_root: Annotated[Path | None, typer.Option(help="Folder holding camvid_120x90.npz (default "
                                                        "$CONFORMOOD_DATA, else ../shared/data).")] = None,
    data_dir: Annotated[Path | None, typer.Option(hidden=True, help="Former name of --data-root.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the base model and of the splits.")] = 0,
    unet_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the base U-Net (cached in OUT/models).")] = 25,
    at_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the AT threshold predictor.")] = 30,
    coat_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the COAT threshold predictor.")] = 100,
    predictor: Annotated[str, typer.Option(help="f_D of AT and COAT: 'mobilenet_v2' (ImageNet weights with a 4th "
                                                "input channel, the paper's kind), 'small' (from scratch) or 'auto' "
                                                "(mobilenet_v2 when make weights has run).")] = "auto",
    progress: Annotated[bool, typer.Option(help=PROGRESS_HELP)] = True,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP + " A cached base model and the splits recorded in "
                                            "coat_splits.json with the same settings are reused.")] = False,
) -> None:
    """CRC vs AT vs COAT (conformal FNR control in segmentation): marginal coverage and coverage gap."""
    from ..experiments.coat import CoatConfig, run_coat

    # `--alpha 0.1 0.2`: the values after the first arrive as extra arguments.
    words = [w for item in (alpha or []) for w in item.replace(",", " ").split()] + list(ctx.args)
    try:
        alphas = tuple(float(w) for w in words) if words else (0.1, 0.2)
    except ValueError as exc:
        fail(f"--alpha values must be numbers, got {words} ({exc})")
    data_root = former_spelling(data_root, data_dir, "--data-root", "--data-dir")
    cfg = config(CoatConfig, data=data, class_name=class_name, data_dir=str(data_root) if data_root else None,
                     alphas=alphas, splits=splits, seed=seed, unet_epochs=unet_epochs, at_epochs=at_epochs,
                     coat_epochs=coat_epochs, predictor=predictor)
    _run_reproduction(run_coat, out, cfg, progress, "coat", width=140, overwrite=overwrite)


@reproduce_app.command("ccs-sim", cls=Command)
def reproduce_ccs_sim(
    seeds: Annotated[int, typer.Option(min=1, help="Number of random seeds (the paper uses 40).")] = 40,
    seed_offset: Annotated[int, typer.Option(help="First seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for ccs_sim.json and ccs_sim.md.")] = Path("ccs-output"),
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (one CPU thread each).")] = 2,
    detach_quantile: Annotated[
        bool, typer.Option(help="Detach q̂ as the paper's text says (diverges; see the module docs).")
    ] = False,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the learned sets.")] = 30,
    pairs_per_anchor: Annotated[
        int | None, typer.Option("--pairs-per-anchor", min=1,
                                 help="Positives and negatives sampled per training anchor (default 200).")
    ] = None,
    former_k: Annotated[int | None, typer.Option("--k", min=1, hidden=True,
                                                 help="Former name of --pairs-per-anchor.")] = None,
    n_per_class: Annotated[int, typer.Option(min=50, help="Points per class of the simulation.")] = 5000,
    progress: Annotated[bool, typer.Option(help=PROGRESS_HELP)] = True,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
) -> None:
    """Table 1 of the contrastive conformal sets paper: 8 set families on the 3-D mixed clusters."""
    from ..experiments.ccs import CCSSimConfig, run_ccs_sim

    pairs_per_anchor = former_spelling(pairs_per_anchor, former_k, "--pairs-per-anchor", "--k") or 200
    cfg = config(CCSSimConfig, seeds=seeds, seed_offset=seed_offset, workers=workers,
                     detach_quantile=detach_quantile, epochs=epochs, pairs_per_anchor=pairs_per_anchor,
                     n_per_class=n_per_class)
    _run_reproduction(run_ccs_sim, out, cfg, progress, "ccs_sim", width=160, overwrite=overwrite)


def _run_reproduction(run: Any, out: Path, cfg: Any, progress: bool, name: str, width: int,
                      overwrite: bool) -> None:
    """A reproduction through :func:`run_experiment` (an earlier run's results are refused unless ``overwrite``);
    prints ``name.md`` and the wall time."""
    from rich.console import Console

    def show(result: dict) -> None:
        Console(width=width).print((out / f"{name}.md").read_text())
        Console().print(f"wall time {result['wall_time_s']:.1f} s; results: {out / f'{name}.json'}")

    prepare_output(out, overwrite, (f"{name}.json", f"{name}.md", "*.png"), keep=("models",))
    run_experiment(run, cfg, out, show, progress=progress)
