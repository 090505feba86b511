"""``conformood demo``, ``train``, ``recipes`` and ``detectors``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._boundary import (
    WEIGHTS_HELP,
    config,
    fail,
    former_spelling,
    given_on_command_line,
    prepare_output,
    resolve_device,
    run_experiment,
    set_data_root,
    staged_output,
    user_errors,
)
from .app import Command, RegistryHelp, app
from .reproduce import OVERWRITE_HELP

DEVICE_HELP = "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."


DEMO_DATA = ("textile", "digits")
DEMO_OUTPUTS = ("*.json", "*.md", "*.png", "*.html", "inspection")


@app.command(cls=Command)
def demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, report.md and the figures.")] = Path(
        "demo-output"
    ),
    data: Annotated[str, typer.Option(help="'textile': inspection images, frozen ImageNet MobileNetV2 (needs make "
                                           "weights); 'digits': FIRM trained on scikit-learn's digits.")] = "textile",
    epochs: Annotated[int, typer.Option(min=1, help="digits: training epochs per class.")] = 40,
    classes: Annotated[
        list[str] | None,
        typer.Option("--classes", help="digits: in-distribution classes (repeat or space-separate); default all 10."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and the augmentations.")] = 0,
    alpha: Annotated[float, typer.Option(help="Target false-alarm rate of the conformal threshold, in (0, 1).")] = 0.1,
    per_class: Annotated[int | None, typer.Option(min=8, help="textile: images of each kind to use (quick run); "
                                                              "default all.")] = None,
    weights: Annotated[str, typer.Option(help="textile: " + WEIGHTS_HELP)] = "imagenet",
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
) -> None:
    """The demo: textile defects found by a frozen pretrained backbone (default), or FIRM on digits; each with a
    conformal false-alarm rate and the raw-pixel baseline beside it."""
    from ..report.summary import print_demo_summary, print_inspection_summary

    if data not in DEMO_DATA:
        fail(f"--data must be one of {', '.join(DEMO_DATA)}, got {data!r}")
    device = resolve_device(device)
    names = [c for item in (classes or []) for c in item.replace(",", " ").split()]
    if data == "textile":
        from ..experiments import InspectionConfig, run_inspection_demo

        misplaced = [f"--{o}" for o in ("epochs", "classes") if given_on_command_line(ctx, o)]
        if misplaced:
            fail(f"{', '.join(misplaced)} apply to --data digits only")
        cfg = config(InspectionConfig, seed=seed, alpha=alpha, device=device, per_class=per_class, weights=weights)
        with staged_output(out, overwrite, DEMO_OUTPUTS) as staging:
            run_experiment(run_inspection_demo, cfg, staging, lambda result: print_inspection_summary(result, out),
                           progress=progress)
        return
    from ..experiments import DemoConfig, run_demo

    misplaced = [f"--{o.replace('_', '-')}" for o in ("per_class", "weights") if given_on_command_line(ctx, o)]
    if misplaced:
        fail(f"{', '.join(misplaced)} apply to --data textile only")
    cfg = config(DemoConfig, epochs=epochs, seed=seed, alpha=alpha, device=device,
                 **({"classes": names} if names else {}))
    with staged_output(out, overwrite, DEMO_OUTPUTS) as staging:
        run_experiment(run_demo, cfg, staging, lambda result: print_demo_summary(result, out), progress=progress)


#: options of `train` that are recipe fields: given explicitly, they override the recipe's value
TRAIN_FIELDS = ("data", "split", "normal_class", "objective", "epochs", "batch_size", "lr", "temperature",
                "image_size", "seed", "max_images", "encoder", "weights", "backbone_input_size", "freeze_blocks",
                "freeze_bn", "backbone_lr")
TRAIN_OUTPUTS = ("checkpoint.safetensors", "model.safetensors", "train.json", "diagnostics.png")


@app.command(cls=RegistryHelp)
def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for checkpoint.safetensors, model.safetensors, train.json.")] = Path(
        "train-output"
    ),
    config_name: Annotated[
        str | None,
        typer.Option("--config", help="A recipe: a shipped name ({recipes}) or a YAML file. Options given "
                     "explicitly below override its fields; train.json records the merged result."),
    ] = None,
    data: Annotated[
        str, typer.Option(help="{datasets}, or an image folder / .tar(.gz) laid out split/class/*.jpg.")
    ] = "digits",
    split: Annotated[str, typer.Option(help="Sub-folder of the image folder to train on.")] = "train",
    normal_class: Annotated[
        str | None, typer.Option(help="Train on this class only (one-vs-rest); default: every image.")
    ] = None,
    objective: Annotated[
        str, typer.Option(help="One of {objectives} (the outlier-exposure ones need a recipe with an oe_pool).")
    ] = "firm",
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 40,
    batch_size: Annotated[int, typer.Option(min=2, help="Global batch size (split over torchrun processes).")] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 0.1,
    temperature: Annotated[float, typer.Option(help="Temperature of the contrastive loss.")] = 0.2,
    input_size: Annotated[int | None, typer.Option(min=4, help="The size the encoder sees: images are resized to "
                                                   "this square size (with --backbone, the views; default 16, or "
                                                   "128 with --backbone).")] = None,
    image_size: Annotated[int | None, typer.Option(min=4, hidden=True, help="Former name of --input-size for the "
                                                   "stored image size.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and the augmentations.")] = 0,
    max_images: Annotated[
        int | None, typer.Option(min=2, help="Train on at most this many images (a seeded subset), for quick runs.")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="Fine-tune this pretrained backbone (e.g. mobilenet_v2) as the encoder.")
    ] = None,
    weights: Annotated[str, typer.Option(help=WEIGHTS_HELP)] = "imagenet",
    backbone_input_size: Annotated[int | None, typer.Option(hidden=True, help="Former name of --input-size with "
                                                            "--backbone.")] = None,
    freeze_blocks: Annotated[int, typer.Option(min=0, help="With --backbone: keep the first N blocks fixed.")] = 0,
    freeze_bn: Annotated[bool, typer.Option(help="With --backbone: keep BatchNorm statistics pretrained.")] = False,
    backbone_lr: Annotated[
        float | None, typer.Option(help="With --backbone: the backbone's own learning rate (default --lr).")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Folder of the named data sets and of relative paths in recipes "
                                  "(default $CONFORMOOD_DATA, else ../shared/data).")
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.safetensors if present.")] = False,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a contrastive encoder; runs as is or under `torchrun --nproc_per_node N`."""
    from ..experiments.train import run_training
    from ..train.run_config import TrainRunConfig, load_train_config, read_recipe

    set_data_root(data_root)
    device = resolve_device(device)
    # one option for the size the encoder sees: the stored image size of a network trained from scratch, the
    # views' size of a backbone (whose stored image size stays the recipe's)
    uses_backbone = backbone is not None or (
        config_name is not None and "backbone_input_size" in user_errors(read_recipe, config_name)[1])
    if backbone_input_size is not None:
        input_size = former_spelling(input_size, backbone_input_size, "--input-size", "--backbone-input-size")
        uses_backbone = True
    if image_size is not None and not uses_backbone:
        input_size = former_spelling(input_size, image_size, "--input-size", "--image-size")
    elif image_size is not None:
        former_spelling(None, image_size, "--input-size", "--image-size")
    explicit_size = {("backbone_input_size" if uses_backbone else "image_size"): input_size} if input_size else {}
    if uses_backbone and image_size is not None:
        explicit_size["image_size"] = image_size
    image_size = explicit_size.get("image_size", 16)
    backbone_input_size = explicit_size.get("backbone_input_size", 128)
    values = {"data": data, "split": split, "normal_class": normal_class, "objective": objective, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "temperature": temperature, "image_size": image_size,
              "seed": seed, "max_images": max_images, "weights": weights, "backbone_input_size": backbone_input_size,
              "freeze_blocks": freeze_blocks, "freeze_bn": freeze_bn, "backbone_lr": backbone_lr}
    if backbone is not None:
        values["encoder"] = backbone
    if config_name is not None:
        explicit = {k: v for k, v in values.items()
                    if k not in ("image_size", "backbone_input_size")
                    and given_on_command_line(ctx, "backbone" if k == "encoder" else k)} | explicit_size
        cfg = config(load_train_config, path=config_name, device=device, **explicit)
    else:
        cfg = config(TrainRunConfig, device=device, **values)
    if resume and overwrite:
        fail("--resume continues the run in OUT and --overwrite replaces it; give one of them")
    prepare_output(out, overwrite, TRAIN_OUTPUTS if not resume else ())

    def show(result: dict) -> None:
        if result["rank"] == 0:
            typer.echo(
                f"trained {cfg.objective} on {result['n_train']} images with {result['world_size']} process(es): "
                f"final loss {result['history']['loss'][-1]:.4f}, {result['wall_time_s']:.1f} s -> {out}"
            )

    try:
        run_experiment(run_training, cfg, out, show, resume=resume, progress=progress)
    except KeyboardInterrupt:
        typer.echo(f"\nInterrupted. The last checkpoint is {out / 'checkpoint.safetensors'}; continue with the same "
                   "command and --resume.", err=True)
        raise typer.Exit(130) from None


@app.command(cls=Command)
def recipes() -> None:
    """List the training recipes shipped with conformood (use one with `conformood train --config NAME`)."""
    from rich.console import Console
    from rich.table import Table

    from ..train.run_config import recipe_description, recipe_names

    table = Table(title="conformood recipes (conformood train --config NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    for name in recipe_names():
        table.add_row(name, user_errors(recipe_description, name))
    Console(width=120).print(table)


@app.command(cls=Command)
def detectors() -> None:
    """List the registered detectors: name, input, labels needed, and the paper and equation."""
    from rich.console import Console
    from rich.table import Table

    from ..scores import detector_info, list_detectors

    table = Table(title="conformood detectors (higher score = more in-distribution)")
    for column in ("name", "input", "labels", "reference"):
        table.add_column(column)
    for name in list_detectors():
        info = detector_info(name)
        table.add_row(name, info.input, "yes" if info.needs_labels else "", info.reference)
    Console(width=120).print(table)
