"""The ``conformood`` command: it parses arguments and calls the library, nothing more."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

app = typer.Typer(
    name="conformood",
    help="Contrastive OOD and anomaly detection with conformal guarantees.",
    no_args_is_help=True,
    add_completion=False,
)


class _RegistryHelp(TyperCommand):
    """Fills the option help's registry placeholders ({datasets}, {objectives}, {protocols}) from the registries
    when help is shown, so that the choices come from the registries while starting a command imports no torch."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from .data import DATASETS, protocol_help
        from .train.recipes import OBJECTIVES

        fill = {"{datasets}": ", ".join(DATASETS.names()), "{objectives}": ", ".join(OBJECTIVES.names()),
                "{protocols}": protocol_help()}
        for param in self.params:
            for token, text in fill.items():
                if getattr(param, "help", None) and token in param.help:
                    param.help = param.help.replace(token, text)
        super().format_help(ctx, formatter)


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
        list[str] | None,
        typer.Option("--classes", help="In-distribution classes (repeat or space-separate); default all 10."),
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
    config = _config(DemoConfig, epochs=epochs, seed=seed, alpha=alpha, device=device,
                     **({"classes": names} if names else {}))
    _run_experiment(run_demo, config, out, lambda result: _print_summary(result, out), progress=progress)


@app.command(cls=_RegistryHelp)
def train(
    out: Annotated[Path, typer.Option(help="Folder for checkpoint.safetensors, model.safetensors, train.json.")] = Path(
        "train-output"
    ),
    data: Annotated[
        str, typer.Option(help="{datasets}, or an image folder / .tar(.gz) laid out "
                         "split/class/*.jpg.")
    ] = "digits",
    split: Annotated[str, typer.Option(help="Sub-folder of the image folder to train on.")] = "train",
    normal_class: Annotated[
        str | None, typer.Option(help="Train on this class only (one-vs-rest); default: every image.")
    ] = None,
    objective: Annotated[
        str, typer.Option(help="One of {objectives} (the outlier-exposure recipes need "
                         "--config for their pool).")
    ] = "firm",
    epochs: Annotated[int, typer.Option(min=1)] = 40,
    batch_size: Annotated[int, typer.Option(min=2, help="Global batch size (split over torchrun processes).")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 0.1,
    temperature: Annotated[float, typer.Option()] = 0.2,
    image_size: Annotated[int, typer.Option(min=4, help="Images are resized to this square size.")] = 16,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="'cpu', 'cuda' or 'auto'.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.safetensors if present.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    config: Annotated[
        Path | None,
        typer.Option(help="A YAML recipe (see configs/); its fields replace the options above, except --out, "
                     "--resume, --device, --progress and --normal-class (which, when given, wins over the file)."),
    ] = None,
) -> None:
    """Train a contrastive encoder; runs as is or under `torchrun --nproc_per_node N`."""
    import torch

    from .experiments.train import run_training
    from .train.recipes import TrainRunConfig

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if config is not None:
        from .train.recipes import load_train_config

        if not config.is_file():
            raise typer.BadParameter(f"no config file {config}")
        cfg = _config(load_train_config, path=config, device=device, normal_class=normal_class)
    else:
        cfg = _config(
            TrainRunConfig, data=data, split=split, normal_class=normal_class, objective=objective,
            epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature, image_size=image_size,
            seed=seed, device=device,
        )

    def show(result: dict) -> None:
        if result["rank"] == 0:
            typer.echo(
                f"trained {cfg.objective} on {result['n_train']} images with {result['world_size']} process(es): "
                f"final loss {result['history']['loss'][-1]:.4f}, {result['wall_time_s']:.1f} s -> {out}"
            )

    _run_experiment(run_training, cfg, out, show, resume=resume, progress=progress)


def _parse_options(items: list[str] | None) -> dict:
    import json

    options = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--option must be key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


@app.command(cls=_RegistryHelp)
def evaluate(
    train: Annotated[Path | None, typer.Option(help="npz with 'features' (n, d), optional 'labels', 'logits'.")] = None,
    calibration: Annotated[Path | None, typer.Option(help="npz of held-out in-distribution data, same arrays.")] = None,
    test: Annotated[
        Path | None, typer.Option(help="npz with the same arrays plus 'is_inlier' (n,) bool, True = in-distribution.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="model.safetensors from `conformood train` (instead of the three files).")
    ] = None,
    data: Annotated[
        str, typer.Option(help="With --checkpoint: {datasets}, or an image folder / tar.")
    ] = "digits",
    protocol: Annotated[str, typer.Option(help="With --checkpoint: {protocols}.")] = "one-vs-rest:0",
    detector: Annotated[str, typer.Option(help="A registry name (see `conformood detectors`).")] = "knn_cosine",
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Detector option key=value (repeatable).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Level of the false-alarm and FDR guarantees, in (0, 1).")] = 0.1,
    mondrian: Annotated[
        bool, typer.Option(help="Calibrate per class ('labels' in calibration and test files).")
    ] = False,
    out: Annotated[Path, typer.Option(help="Folder for evaluation.json/.md, report.html and figures.")] = Path(
        "evaluation"
    ),
) -> None:
    """Fit a detector, calibrate it conformally, and measure OOD metrics and the guarantees."""
    from .experiments.evaluate import (
        EvaluateConfig,
        feature_files_from_checkpoint,
        run_evaluation,
    )

    if checkpoint is not None:
        train, calibration, test = _user_errors(feature_files_from_checkpoint, checkpoint, data, protocol, out)
    elif train is None or calibration is None or test is None:
        raise typer.BadParameter("give --train, --calibration and --test files, or --checkpoint with --data and "
                                 "--protocol")
    config = _config(EvaluateConfig, train=train, calibration=calibration, test=test, detector=detector,
                     options=_parse_options(option), alpha=alpha, mondrian=mondrian)

    def show(r: dict) -> None:
        typer.echo(
            f"{detector}: AUROC {r['auroc']:.4f}, FPR@95TPR {r['fpr95']:.4f}, realised FPR at α={alpha}: "
            f"{r['realised_fpr_at_alpha']:.4f}, BH discoveries {r['bh_discoveries']} (FDP {r['bh_fdp']:.3f}, "
            f"power {r['bh_power']:.3f}) -> {out / 'evaluation.json'}"
        )

    _run_experiment(run_evaluation, config, out, show)


@app.command()
def score(
    detector_file: Annotated[Path, typer.Option(help="detector.safetensors written by `conformood evaluate`.")],
    inputs: Annotated[Path, typer.Option(help="npz with 'features' (or 'logits'), and 'labels' if Mondrian.")],
    alpha: Annotated[float, typer.Option(help="Level of the decisions, in (0, 1).")] = 0.1,
    logits: Annotated[bool, typer.Option(help="Score the 'logits' array instead of 'features'.")] = False,
    out: Annotated[Path, typer.Option(help="JSON file for per-input p-values and decisions (a CSV beside it).")] = Path(
        "scores.json"
    ),
) -> None:
    """Apply a saved calibrated detector: per-input p-values, α-level flags and BH selection."""
    from .experiments.evaluate import score_file

    r = _user_errors(score_file, detector_file, inputs, alpha, out, use_logits=logits)
    typer.echo(f"{r['n']} inputs: {r['n_flagged']} flagged at α={alpha}, {r['n_bh_selected']} selected by BH -> {out}")


@app.command()
def detectors() -> None:
    """List the registered detectors: name, input, labels needed, and the paper and equation."""
    from rich.console import Console
    from rich.table import Table

    from .scores import detector_info, list_detectors

    table = Table(title="conformood detectors (higher score = more in-distribution)")
    for column in ("name", "input", "labels", "reference"):
        table.add_column(column)
    for name in list_detectors():
        info = detector_info(name)
        table.add_row(name, info.input, "yes" if info.needs_labels else "", info.reference)
    Console(width=120).print(table)


reproduce_app = typer.Typer(help="Reproduce a paper's experiment and write JSON + Markdown + figures.",
                            no_args_is_help=True)
app.add_typer(reproduce_app, name="reproduce")


@reproduce_app.command("coat", context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
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
    data_dir: Annotated[Path | None, typer.Option(help="Folder holding camvid_120x90.npz.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the base model and of the splits.")] = 0,
    unet_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the base U-Net (cached in OUT/models).")] = 25,
    at_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the AT threshold predictor.")] = 30,
    coat_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the COAT threshold predictor.")] = 100,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """CRC vs AT vs COAT (conformal FNR control in segmentation): marginal coverage and coverage gap."""
    from .experiments.coat import CoatConfig, run_coat

    # `--alpha 0.1 0.2`: the values after the first arrive as extra arguments.
    words = [w for item in (alpha or []) for w in item.replace(",", " ").split()] + list(ctx.args)
    try:
        alphas = tuple(float(w) for w in words) if words else (0.1, 0.2)
    except ValueError as exc:
        raise typer.BadParameter(f"alpha values must be numbers, got {words}") from exc
    config = _config(CoatConfig, data=data, class_name=class_name, data_dir=str(data_dir) if data_dir else None,
                     alphas=alphas, splits=splits, seed=seed, unet_epochs=unet_epochs, at_epochs=at_epochs,
                     coat_epochs=coat_epochs)
    _run_reproduction(run_coat, out, config, progress, "coat", width=140)


@reproduce_app.command("ccs-sim")
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
        int, typer.Option("--pairs-per-anchor", "--k", min=1,
                          help="Positives and negatives sampled per training anchor.")
    ] = 200,
    n_per_class: Annotated[int, typer.Option(min=50, help="Points per class of the simulation.")] = 5000,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Table 1 of the contrastive conformal sets paper: 8 set families on the 3-D mixed clusters."""
    from .experiments.ccs import CCSSimConfig, run_ccs_sim

    config = _config(CCSSimConfig, seeds=seeds, seed_offset=seed_offset, workers=workers,
                     detach_quantile=detach_quantile, epochs=epochs, pairs_per_anchor=pairs_per_anchor,
                     n_per_class=n_per_class)
    _run_reproduction(run_ccs_sim, out, config, progress, "ccs_sim", width=160)


def _user_errors(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``function``; a user error (a bad value, a missing file) becomes one usage line and exit code 2."""
    try:
        return function(*args, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from exc


def _config(factory: Callable[..., Any], **fields: Any) -> Any:
    """An experiment's configuration; an invalid field is a usage error."""
    return _user_errors(factory, **fields)


def _run_experiment(run: Callable[..., dict], config: Any, out: Path, show: Callable[[dict], None],
                    **options: Any) -> dict:
    """The one runner of every experiment: ``run(config, out, **options)`` writes JSON and its report, then
    ``show(result)`` prints the summary. User errors become one usage line (exit code 2)."""
    result = _user_errors(run, config, out, **options)
    show(result)
    return result


def _run_reproduction(run: Callable[..., dict], out: Path, config: Any, progress: bool, name: str,
                      width: int) -> None:
    """A reproduction through :func:`_run_experiment`; prints ``name.md`` and the wall time."""
    from rich.console import Console

    def show(result: dict) -> None:
        Console(width=width).print((out / f"{name}.md").read_text())
        Console().print(f"wall time {result['wall_time_s']:.1f} s; results: {out / f'{name}.json'}")

    _run_experiment(run, config, out, show, progress=progress)


def _print_summary(result: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mean over {len(result['per_class'])} class(es), α = {result['config']['alpha']}")
    keys = ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_accuracy", "realised_fpr_at_alpha")
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
