"""``conformood inspect fit`` / ``inspect run``: a folder of good part images to a fitted, calibrated inspector;
a folder of new parts to decisions, anomaly maps and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._boundary import WEIGHTS_HELP, echo_warnings, fail, staged_output, user_errors, weights_option
from .app import Command, Group, app

inspect_app = typer.Typer(help="Inspection: fit on a folder of good parts, then judge folders of new parts with a "
                               "stated false-alarm rate.", no_args_is_help=True, cls=Group)
app.add_typer(inspect_app, name="inspect")


@inspect_app.command("fit", cls=Command)
def inspect_fit(
    normal: Annotated[Path, typer.Option(help="Folder (or .tar/.tar.gz) of good part images, in any sub-folders: "
                                              "PNG, JPEG, BMP, TIFF, WebP; gray or colour; any sizes.")],
    out: Annotated[Path, typer.Option(help="The inspector file to write (.safetensors).")] = Path(
        "inspector.safetensors"),
    backbone: Annotated[str, typer.Option(help="A registered backbone: efficientnet_lite0/1/2, mobilenet_v2.")] =
        "efficientnet_lite0",
    weights: Annotated[str, typer.Option(help=WEIGHTS_HELP)] = "imagenet",
    input_size: Annotated[int | None, typer.Option(help="Side of the square model input; default the backbone's "
                                                   "own.")] = None,
    resize: Annotated[str, typer.Option(help="'pad': keep the aspect ratio, the long side to the input, the short "
                                             "side's edge repeated; or 'stretch' to the square input.")] = "pad",
    alpha: Annotated[float, typer.Option(help="Target rate of flagging a good part, in (0, 1).")] = 0.1,
    delta: Annotated[float | None, typer.Option(help="PAC form: the realised false-alarm rate is ≤ α with "
                                                "probability ≥ 1 − δ over the calibration draw.")] = None,
    calibration_fraction: Annotated[float, typer.Option(help="Share of the good images kept for calibration "
                                                        "(never fitted).")] = 0.2,
    coreset_fraction: Annotated[float, typer.Option(help="Share of the good patches kept in PatchCore's memory "
                                                    "bank (greedy k-center coreset).")] = 0.1,
    border: Annotated[int, typer.Option(help="Rings of the patch grid left out of the image score.")] = 0,
    pooled: Annotated[bool, typer.Option(help="Join PatchCore with a pooled-feature kNN score (calibrated "
                                              "ensemble; for changes of the whole part rather than local "
                                              "defects).")] = False,
    local: Annotated[str, typer.Option(help="The patch detector: 'patchcore' (nearest good patch) or 'gaussian' "
                                            "(one Gaussian of all good patches at a quarter of the input "
                                            "resolution; uniform textures with pixel-sized defects).")] =
        "patchcore",
    rule: Annotated[str, typer.Option(help="With --pooled: how the two scores' p-values are joined: fisher, min_p "
                                           "or mean_rank.")] = "fisher",
    patch_stages: Annotated[list[int] | None, typer.Option(help="The backbone units the patch detector reads "
                                                           "(repeat: two for patchcore, one for gaussian); default "
                                                           "the backbone's own.")] = None,
    augment: Annotated[list[str] | None, typer.Option(help="Flips of the fitting images whose patches join the "
                                                        "memory bank: 'hflip', 'vflip' (repeat the option); for "
                                                        "parts that look the same mirrored.")] = None,
    image_score: Annotated[str, typer.Option(help="A part's score: 'worst_patch' (PatchCore's reweighted worst "
                                                  "patch) or 'map_peak' (the peak of the smoothed anomaly map).")] =
        "worst_patch",
    map_sigma: Annotated[float, typer.Option(help="Smoothing of the anomaly maps, in input pixels (PatchCore: 4).")]
        = 4.0,
    seed: Annotated[int, typer.Option(help="Seed of the split and the coreset.")] = 0,
    defects: Annotated[Path | None, typer.Option(help="Folder of defective part images whose masks calibrate "
                                                      "defect regions (with --masks).")] = None,
    masks: Annotated[Path | None, typer.Option(help="Folder of defect masks named after the images (a.png or "
                                                    "a_mask.png for a.jpg, same sub-folders; white = defect).")] =
        None,
    pixel_alpha: Annotated[float | None, typer.Option(help="Regions: the expected fraction of a defect's pixels "
                                                      "missed, in (0, 1); default 0.1.")] = None,
    method: Annotated[str | None, typer.Option(help="Regions: 'crc' (one threshold), 'at' or 'coat' (a threshold "
                                               "per image, learned on half of the defects), 'ltt' (also bounds "
                                               "the area flagged on good parts; needs --area-alpha, "
                                               "--region-delta); default crc.")] = None,
    area_alpha: Annotated[float | None, typer.Option(help="Regions, ltt: the mean area flagged on good parts.")] =
        None,
    region_delta: Annotated[float | None, typer.Option(help="Regions, ltt: both levels hold with probability ≥ 1 − "
                                                       "this.")] = None,
    region_epochs: Annotated[int | None, typer.Option(help="Regions, at/coat: epochs of the threshold predictor "
                                                      "(default 30 / 60).")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Leave out unreadable image files (listed) instead of stopping.")] =
        False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    """Fit PatchCore (and a pooled kNN score) on part of the good images, calibrate the decision on the rest:
    P(flag a good part) ≤ α. With --defects and --masks, also calibrate defect regions with a stated miss rate."""
    from ..experiments.inspect import InspectConfig
    from ..experiments.inspect_regions import RegionConfig
    from ..experiments.inspect_run import fit_inspection
    from ._boundary import config

    if out.is_dir():
        fail(f"--out {out} is a folder; give a file name")
    if out.exists() and not overwrite:
        fail(f"--out {out} exists; pass --overwrite to replace it")
    if not normal.exists():
        fail(f"--normal {normal} does not exist")
    cfg = config(InspectConfig, backbone=backbone, weights=weights_option(weights), input_size=input_size,
                 resize=resize, alpha=alpha, delta=delta, calibration_fraction=calibration_fraction,
                 coreset_fraction=coreset_fraction, border=border, pooled=pooled, seed=seed,
                 augment=tuple(augment or ()), local=local, rule=rule, image_score=image_score, map_sigma=map_sigma,
                 patch_stages=tuple(patch_stages) if patch_stages else None)
    region_options = {"pixel_alpha": pixel_alpha, "method": method, "area_alpha": area_alpha,
                      "delta": region_delta, "epochs": region_epochs}
    given = {k: v for k, v in region_options.items() if v is not None}
    rcfg = None
    if (defects is None) != (masks is None):
        fail("--defects and --masks go together: the defective images and their masks")
    if defects is None and given:
        fail(f"--{next(iter(given)).replace('_', '-')} needs --defects and --masks to calibrate regions on")
    if defects is not None:
        for flag, path in (("--defects", defects), ("--masks", masks)):
            if not path.exists():
                fail(f"{flag} {path} does not exist")
        rcfg = config(RegionConfig, seed=seed, **given)
    inspector = echo_warnings(fit_inspection, normal, cfg, defects, masks, rcfg, progress=progress,
                              skip_bad=skip_bad)
    out.parent.mkdir(parents=True, exist_ok=True)
    user_errors(inspector.save, out)
    split = {k: len(v) for k, v in inspector.record["split"].items()}
    skipped = inspector.record["skipped"]
    if skipped:
        typer.echo(f"{len(skipped)} unreadable file(s) left out: {'; '.join(skipped[:3])}"
                   f"{' …' if len(skipped) > 3 else ''}", err=True)
    typer.echo(f"{inspector.record['n_good']} good images ({', '.join(f'{v} {k}' for k, v in split.items())}), "
               f"{cfg.backbone} at {cfg.size}², "
               f"{_local_summary(inspector)}; "
               f"P(flag a good part) ≤ {cfg.alpha}{f' with probability ≥ {1 - cfg.delta:g}' if cfg.delta else ''}"
               f" -> {out}")
    if inspector.regions is not None:
        typer.echo(inspector.regions.guarantee())


@inspect_app.command("run", cls=Command)
def inspect_run(
    model: Annotated[Path, typer.Option(help="Inspector file from `conformood inspect fit`.")],
    images: Annotated[Path, typer.Option(help="Folder (or .tar/.tar.gz) of part images to judge, in any "
                                              "sub-folders.")],
    out: Annotated[Path, typer.Option(help="Folder for results.csv, results.json, maps/, overlays/, report.html "
                                           "(and regions/ when the inspector has defect regions).")]
        = Path("inspection"),
    alpha: Annotated[float | None, typer.Option(help="Decide at this level instead of the fitted α, in (0, 1).")] =
        None,
    maps: Annotated[bool, typer.Option(help="Write a map and an overlay PNG for every image (otherwise only the "
                                            "report's).")] = True,
    skip_bad: Annotated[bool, typer.Option(help="Leave out unreadable image files (listed) instead of stopping.")] =
        False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace the results of an earlier run in OUT.")] = False,
) -> None:
    """Score every image: anomaly score, conformal p-value and flag per image (CSV, JSON), anomaly maps,
    overlays and an HTML report; with calibrated regions, each image's region as <stem>_region.png."""
    from .._validation import check_alpha
    from ..experiments.inspect_run import RUN_OUTPUTS, run_inspection

    if alpha is not None:
        user_errors(check_alpha, alpha, "--alpha")
    if not images.exists():
        fail(f"--images {images} does not exist")
    with staged_output(out, overwrite, RUN_OUTPUTS) as staging:
        r = echo_warnings(run_inspection, model, images, staging, alpha=alpha, maps=maps, progress=progress,
                          skip_bad=skip_bad)
    c = r["counts"]
    if c["skipped"]:
        typer.echo(f"{c['skipped']} unreadable file(s) left out and listed in results.json", err=True)
    typer.echo(f"{c['flagged']} of {c['images']} image(s) flagged at α = {r['alpha']} -> {out}/results.csv, "
               f"{out}/report.html")


def _local_summary(inspector: object) -> str:
    local = inspector.local
    if hasattr(local, "memory_bank_"):
        return f"memory bank {local.memory_bank_.shape[0]:,} patches"
    return f"patch Gaussian of {local.n_features_in_} features"
