"""``conformood monitor``, ``export`` and ``extract``: a calibrated detector after deployment, and the feature
files it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._boundary import (
    WEIGHTS_HELP,
    echo_warnings,
    fail,
    former_spelling,
    staged_output,
    user_errors,
    weights_option,
)
from .app import Command, app


@app.command(cls=Command)
def monitor(
    detector_file: Annotated[Path, typer.Option(help="Calibrated detector (.safetensors from `conformood evaluate`).")],
    inputs: Annotated[
        list[Path], typer.Option(help="npz batches with 'features' (or 'logits'), in arrival order: "
                                      "--inputs a.npz b.npz … (or --inputs repeated).")
    ],
    more_inputs: Annotated[list[Path] | None, typer.Argument(help="Further batches, after those of --inputs.",
                                                             show_default=False)] = None,
    delta: Annotated[float, typer.Option(help="Alarm when the martingale reaches 1/δ; P(ever alarming) ≤ δ.")] = 0.01,
    martingale: Annotated[str, typer.Option(help="Betting function: 'mixture' or 'power'.")] = "mixture",
    epsilon: Annotated[float, typer.Option(help="ε of the power martingale, in (0, 1).")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the p-values' randomised tie-breaking.")] = 0,
    logits: Annotated[bool, typer.Option(help="Score the 'logits' array instead of 'features'.")] = False,
    out: Annotated[Path, typer.Option(help="Output folder for monitor.json and monitor.png.")] = Path("monitor"),
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier monitor run in OUT.")] = False,
) -> None:
    """Raise a drift alarm when a stream of batches stops looking like the calibration data (a conformal test
    martingale; on an exchangeable stream the chance of ever alarming is at most δ)."""
    from .._validation import check_alpha
    from ..experiments.deploy import MONITOR_OUTPUTS, monitor_files

    user_errors(check_alpha, delta, "--delta")
    user_errors(check_alpha, epsilon, "--epsilon")
    if martingale not in ("mixture", "power"):
        fail(f"--martingale must be 'mixture' or 'power', got {martingale!r}")
    batches = list(inputs) + list(more_inputs or [])
    with staged_output(out, overwrite, MONITOR_OUTPUTS) as staging:
        r = echo_warnings(monitor_files, detector_file, batches, staging, delta=delta, martingale=martingale,
                          epsilon=epsilon, seed=seed, use_logits=logits)
    if r["alarm"]:
        typer.echo(f"ALARM at input {r['alarm_time'] + 1} of {r['n']} (batch {r['alarm_batch'] + 1}: "
                   f"{r['alarm_input']}); martingale ≥ 1/δ = {r['alarm_level']:g} -> {out}")
    else:
        typer.echo(f"no alarm over {r['n']} inputs in {len(batches)} batches (max martingale 10^"
                   f"{r['max_log10_martingale']:.2f} < 1/δ = {r['alarm_level']:g}) -> {out}")


@app.command(cls=Command)
def export(
    detector_file: Annotated[Path, typer.Option(help="Calibrated detector (.safetensors from `conformood evaluate`).")],
    out: Annotated[Path, typer.Option(help="The program to write (.pt2).")] = Path("scorer.pt2"),
    model: Annotated[Path | None, typer.Option(help="model.safetensors from `conformood train`: the program then "
                                                    "takes images and runs the encoder first.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Level of the stored flag rule, in (0, 1); default: the α the "
                                                "detector was calibrated for, else 0.1.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    """Write a standalone scorer: one torch.export program mapping inputs to (score, conformal p-value, flag at
    α), loadable with torch alone (torch.export.load(OUT).module())."""
    from .._validation import check_alpha
    from ..experiments.deploy import export_files

    if alpha is not None:
        user_errors(check_alpha, alpha, "--alpha")
    if out.is_dir():
        fail(f"--out {out} is a folder; give a file name")
    if out.exists() and not overwrite:
        fail(f"--out {out} exists; pass --overwrite to replace it")
    meta = echo_warnings(export_files, detector_file, out, alpha, model=model)
    typer.echo(f"{meta['detector']} at α={meta['alpha']} ({meta['n_calibration']} calibration scores, input: "
               f"{meta['input']['kind']} {meta['input']['shape']}) -> {out} [{meta['runtime']}, "
               f"{out.stat().st_size / 1e6:.2f} MB]")


@app.command(cls=Command)
def extract(
    data: Annotated[str, typer.Option(help="A named data set, or an image folder / tar archive.")],
    out: Annotated[Path, typer.Option(help="The .npz to write (features, labels, names[, is_inlier]).")],
    backbone: Annotated[str, typer.Option(help="A registered backbone.")] = "mobilenet_v2",
    model: Annotated[Path | None, typer.Option(help="model.safetensors from `conformood train`, instead of the "
                                                    "backbone.")] = None,
    weights: Annotated[str, typer.Option(help=WEIGHTS_HELP)] = "imagenet",
    input_size: Annotated[int | None, typer.Option(help="Input size the images are resized to (default 224 for a "
                                                   "backbone; a model's own).")] = None,
    split: Annotated[str | None, typer.Option(help="With a folder or archive: its split folder (train, test).")] = None,
    classes: Annotated[list[str] | None, typer.Option("--class", help="Keep this class, by name or index "
                                                                      "(repeatable).")] = None,
    take: Annotated[str | None, typer.Option(help="START:STOP of the remaining images, in stored order.")] = None,
    normal_class: Annotated[list[str] | None, typer.Option(
        "--normal-class", help="Write is_inlier = the image's class is one of these, by name or index "
                               "(repeatable), for a test file.")] = None,
    inlier_class: Annotated[list[str] | None, typer.Option("--inlier-class", hidden=True,
                                                           help="Former name of --normal-class.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 128,
    device: Annotated[str, typer.Option(help="'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'.")] = "auto",
    data_root: Annotated[Path | None, typer.Option(help="Folder of the named data sets.")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Leave out files that cannot be read as images, listed in the "
                                           "file's 'skipped' array, instead of stopping at the first.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """A backbone's (or a trained model's) features of a data set, as the .npz that `conformood evaluate` reads."""
    from ..experiments.extract import ExtractConfig, extract_file
    from ._boundary import config, resolve_device, set_data_root

    normal_class = former_spelling(normal_class, inlier_class, "--normal-class", "--inlier-class")
    set_data_root(data_root)
    if out.is_dir():
        fail(f"--out {out} is a folder; give a file name")
    if out.exists() and not overwrite:
        fail(f"--out {out} exists; pass --overwrite to replace it")
    cfg = config(ExtractConfig, data=data, backbone=None if model is not None else backbone, model=model,
                 weights=weights_option(weights), input_size=input_size, split=split, classes=classes, take=take,
                 inlier_classes=normal_class, batch_size=batch_size, device=resolve_device(device), skip_bad=skip_bad)
    r = user_errors(extract_file, cfg, out, progress=progress)
    extra = f", {r['n_inliers']} inliers" if r["n_inliers"] is not None else ""
    if r["skipped"]:
        typer.echo(f"{len(r['skipped'])} unreadable file(s) left out and listed in {out} ('skipped')", err=True)
    typer.echo(f"{r['n']} images of classes {r['classes']}{extra} -> {r['dim']}-d features in {out}")
