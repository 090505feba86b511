"""``conformood evaluate`` and ``conformood score``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._boundary import (
    WEIGHTS_HELP,
    config,
    fail,
    parse_options,
    prepare_output,
    run_experiment,
    set_data_root,
    user_errors,
    weights_option,
)
from .app import RegistryHelp, app

EVALUATE_OUTPUTS = ("evaluation.json", "evaluation.md", "report.html", "*.png", "features_*.npz", "test_scores.npz",
                    "detector.safetensors")


@app.command(cls=RegistryHelp)
def evaluate(
    train: Annotated[Path | None, typer.Option(help="npz with 'features' (n, d), optional 'labels', 'logits'.")] = None,
    calibration: Annotated[Path | None, typer.Option(help="npz of held-out in-distribution data, same arrays.")] = None,
    test: Annotated[
        Path | None, typer.Option(help="npz with the same arrays plus 'is_inlier' (n,) bool, True = in-distribution.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="model.safetensors from `conformood train` (instead of the three files).")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="A registered backbone, frozen, straight from the images of --data and "
                                 "--protocol (instead of the three files).")
    ] = None,
    weights: Annotated[str, typer.Option(help=WEIGHTS_HELP)] = "imagenet",
    input_size: Annotated[int, typer.Option(help="With --backbone: the input size images are resized to.")] = 224,
    data: Annotated[
        str | None, typer.Option(help="With --checkpoint or --backbone: {datasets}, or an image folder / tar; "
                                 "default: the data "
                                 "set the model was trained on.")
    ] = None,
    protocol: Annotated[
        str | None, typer.Option(help="With --checkpoint or --backbone: {protocols}; default: one-vs-rest on the "
                                 "model's class.")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Folder of the named data sets (default $CONFORMOOD_DATA, else "
                                  "../shared/data).")
    ] = None,
    detector: Annotated[str, typer.Option(help="A registry name (see `conformood detectors`).")] = "knn_cosine",
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Detector option key=value (repeatable).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Level of the false-alarm and FDR guarantees, in (0, 1).")] = 0.1,
    mondrian: Annotated[
        bool, typer.Option(help="Calibrate per class ('labels' in calibration and test files).")
    ] = False,
    delta: Annotated[
        float | None, typer.Option(help="Calibration-conditional flags: P(the deployed threshold's FPR > α) ≤ δ over "
                                   "the calibration draw; reports both thresholds.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for evaluation.json/.md, report.html and figures.")] = Path(
        "evaluation"
    ),
    overwrite: Annotated[
        bool, typer.Option(help="Replace the results of an earlier run in OUT (otherwise such a folder is refused).")
    ] = False,
) -> None:
    """Fit a detector, calibrate it conformally, and measure OOD metrics and the guarantees."""
    from .._validation import check_alpha
    from ..experiments.evaluate import (
        EvaluateConfig,
        feature_files_from_backbone,
        feature_files_from_checkpoint,
        run_evaluation,
    )
    from ..scores import detector_info

    set_data_root(data_root)
    user_errors(check_alpha, alpha)  # option errors first, before any file is read or written
    if delta is not None:
        user_errors(check_alpha, delta, "--delta")
    user_errors(detector_info, detector)
    if protocol is not None:
        from ..data import parse_protocol

        user_errors(parse_protocol, protocol)
    options = parse_options(option)
    files = {"--train": train, "--calibration": calibration, "--test": test}
    model = backbone_record = None
    if backbone is not None:
        given = [name for name, value in {**files, "--checkpoint": checkpoint}.items() if value is not None]
        if given:
            fail(f"--backbone extracts its own features from --data; drop {', '.join(given)}")
        if data is None or protocol is None:
            fail("--backbone needs --data (a named data set or an image folder) and --protocol (e.g. one-vs-rest:0)")
        from ..models import BACKBONES

        user_errors(BACKBONES.info, backbone)
        prepare_output(out, overwrite, EVALUATE_OUTPUTS)
        (train, calibration, test), backbone_record = user_errors(
            feature_files_from_backbone, backbone, data, protocol, out, weights=weights_option(weights),
            input_size=input_size)
    elif checkpoint is not None:
        given = [name for name, value in files.items() if value is not None]
        if given:
            fail(f"--checkpoint encodes its own train, calibration and test images; drop {', '.join(given)} (or "
                 "drop --checkpoint to evaluate those feature files)")
        prepare_output(out, overwrite, EVALUATE_OUTPUTS)
        (train, calibration, test), model = user_errors(feature_files_from_checkpoint, checkpoint, data, protocol,
                                                        out)
    else:
        if data is not None or protocol is not None:
            fail("--data and --protocol choose the images of --checkpoint; with feature files they do not apply")
        missing = [name for name, value in files.items() if value is None]
        if missing:
            fail(f"give {', '.join(missing)} (feature files), or --checkpoint with a trained model")
        prepare_output(out, overwrite, EVALUATE_OUTPUTS)
    cfg = config(EvaluateConfig, train=train, calibration=calibration, test=test, detector=detector,
                 options=options, alpha=alpha, mondrian=mondrian, delta=delta, model=model,
                 backbone=backbone_record)

    def show(r: dict) -> None:
        record = model or backbone_record
        covers = f" ({record['protocol']} on {record['data']})" if record else ""
        typer.echo(
            f"{detector}{covers}: AUROC {r['auroc']:.4f}, FPR@95TPR {r['fpr95']:.4f}, realised FPR at α={alpha}: "
            f"{r['realised_fpr_at_alpha']:.4f}, BH discoveries {r['bh_discoveries']} (FDP {r['bh_fdp']:.3f}, "
            f"power {r['bh_power']:.3f}) -> {out / 'evaluation.json'}"
        )
        if "pac" in r:
            pac, marg = r["pac"]["pac"], r["pac"]["marginal"]
            typer.echo(f"  δ={delta}: PAC rule realised FPR {pac['realised_fpr']:.4f}, OOD flagged "
                       f"{pac['ood_flagged']:.4f}; marginal rule {marg['realised_fpr']:.4f}, {marg['ood_flagged']:.4f}")

    run_experiment(run_evaluation, cfg, out, show)


@app.command()
def score(
    detector_file: Annotated[Path, typer.Option(help="detector.safetensors written by `conformood evaluate`.")],
    inputs: Annotated[
        Path | None, typer.Option(help="npz with 'features' (or 'logits'), and 'labels' if Mondrian.")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="New images instead of --inputs: an npz with 'images' (and 'labels'), or an "
                                  "image folder; encoded by --model or --backbone.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="With --images: model.safetensors from `conformood train`.")
    ] = None,
    backbone: Annotated[str | None, typer.Option(help="With --images: a registered backbone (frozen).")] = None,
    weights: Annotated[str, typer.Option(help=WEIGHTS_HELP)] = "imagenet",
    input_size: Annotated[int, typer.Option(help="With --backbone: the input size.")] = 224,
    alpha: Annotated[float, typer.Option(help="Level of the decisions, in (0, 1).")] = 0.1,
    logits: Annotated[bool, typer.Option(help="Score the 'logits' array instead of 'features'.")] = False,
    out: Annotated[Path, typer.Option(help="JSON file for the per-input scores, p-values and decisions.")] = Path(
        "scores.json"
    ),
    csv: Annotated[
        Path | None, typer.Option(help="CSV file of the same table (default: OUT with the suffix .csv).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing OUT and CSV files.")] = False,
) -> None:
    """Apply a saved calibrated detector: per-input p-values, α-level flags and BH selection."""
    from ..experiments.evaluate import score_file

    if out.suffix.lower() == ".csv":
        fail(f"--out {out} names the JSON result; give the CSV with --csv")
    csv = csv if csv is not None else out.with_suffix(".csv")
    if csv.resolve() == out.resolve():
        fail("--out and --csv must be different files")
    for option, path in (("--out", out), ("--csv", csv)):
        if path.is_dir():
            fail(f"{option} {path} is a folder; give a file name")
        if path.exists() and not overwrite:
            fail(f"{option} {path} exists; pass --overwrite to replace it")
    if (inputs is None) == (images is None):
        fail("give one of --inputs (a features file) or --images (with --model or --backbone)")
    if images is not None and (model is None) == (backbone is None):
        fail("--images needs one of --model (a trained model) or --backbone (a registered backbone)")
    r = user_errors(score_file, detector_file, inputs, alpha, out, use_logits=logits, csv=csv, images=images,
                    model=model, backbone=backbone, weights=weights_option(weights),
                    input_size=input_size)
    typer.echo(f"{r['n']} inputs: {r['n_flagged']} flagged at α={alpha}, {r['n_bh_selected']} selected by BH -> "
               f"{out}, {csv}")
