"""``conformood evaluate`` and ``conformood score``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._boundary import (
    WEIGHTS_HELP,
    config,
    echo_warnings,
    fail,
    parse_options,
    run_experiment,
    set_data_root,
    staged_output,
    user_errors,
    weights_option,
)
from .app import Command, RegistryHelp, app

EVALUATE_OUTPUTS = ("evaluation.json", "evaluation.md", "report.html", "*.png", "features_*.npz", "test_scores.npz",
                    "detector.safetensors")


@app.command(cls=RegistryHelp)
def evaluate(
    train: Annotated[Path | None, typer.Option(help="npz with 'features' (n, d), optional 'labels', 'logits'.")] = None,
    calibration: Annotated[Path | None, typer.Option(help="npz of held-out in-distribution data, same arrays.")] = None,
    test: Annotated[
        Path | None, typer.Option(help="npz with the same arrays plus 'is_inlier' (n,) bool, True = in-distribution. "
                                  "Without it the detector is fitted and calibrated only.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="model.safetensors from `conformood train` (instead of the three files).")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="A registered backbone, frozen, straight from the images of --data and "
                                 "--protocol (instead of the three files).")
    ] = None,
    weights: Annotated[str, typer.Option(help=WEIGHTS_HELP)] = "imagenet",
    input_size: Annotated[int | None, typer.Option(help="With --backbone: the input size images are resized to "
                                                   "(default 224).")] = None,
    data: Annotated[
        str | None, typer.Option(help="With --checkpoint or --backbone: {datasets}, or an image folder / tar; "
                                 "default: the data set the model was trained on.")
    ] = None,
    protocol: Annotated[
        str | None, typer.Option(help="With --checkpoint or --backbone: {protocols}; default: one-vs-rest on the "
                                 "model's class.")
    ] = None,
    normal_class: Annotated[
        str | None, typer.Option(help="With --checkpoint or --backbone: the in-distribution class, by name or index "
                                 "(the protocol one-vs-rest:CLASS).")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Folder of the named data sets (default $CONFORMOOD_DATA, else "
                                  "../shared/data).")
    ] = None,
    detector: Annotated[str, typer.Option(help="A registry name (see `conformood detectors`).")] = "knn_cosine",
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Detector option key=value (repeatable).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Level of the false-alarm and FDR guarantees, in (0, 1); stored in "
                                         "the detector, where `score` takes it from.")] = 0.1,
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
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Fit a detector, calibrate it conformally, and measure OOD metrics and the guarantees."""
    from .._validation import check_alpha
    from ..experiments.evaluate import EvaluateConfig, run_evaluation
    from ..scores import detector_info

    set_data_root(data_root)
    user_errors(check_alpha, alpha)  # option errors first, before any file is read or written
    if delta is not None:
        user_errors(check_alpha, delta, "--delta")
    user_errors(detector_info, detector)
    if normal_class is not None:
        if protocol is not None:
            fail("give one of --normal-class and --protocol (--normal-class C is --protocol one-vs-rest:C)")
        protocol = f"one-vs-rest:{normal_class}"
    if backbone is not None:
        from ..models import BACKBONES

        user_errors(BACKBONES.info, backbone)
    cfg = config(EvaluateConfig, train=train, calibration=calibration, test=test, detector=detector,
                 options=parse_options(option), alpha=alpha, mondrian=mondrian, delta=delta, checkpoint=checkpoint,
                 backbone=backbone, weights=weights_option(weights), input_size=input_size, data=data,
                 protocol=protocol)  # checks which sources go together, before the output folder is touched
    def show(r: dict) -> None:
        record = r.get("feature_source") or {}
        covers = f" ({record['protocol']} on {record['data']})" if "protocol" in record else ""
        if "auroc" not in r:
            typer.echo(f"{detector}{covers}: fitted on {r['n_train']}, calibrated on {r['n_calibration']} inputs at "
                       f"α={alpha} (no --test file: no metrics) -> {out / 'detector.safetensors'}")
            return
        typer.echo(
            f"{detector}{covers}: AUROC {r['auroc']:.4f}, FPR@95TPR {r['fpr95']:.4f}, realised FPR at α={alpha}: "
            f"{r['realised_fpr_at_alpha']:.4f}, BH discoveries {r['bh_discoveries']} (FDP {r['bh_fdp']:.3f}, "
            f"power {r['bh_power']:.3f}) -> {out / 'evaluation.json'}"
        )
        if "pac" in r:
            pac, marg = r["pac"]["pac"], r["pac"]["marginal"]
            typer.echo(f"  δ={delta}: PAC rule realised FPR {pac['realised_fpr']:.4f}, OOD flagged "
                       f"{pac['ood_flagged']:.4f}; marginal rule {marg['realised_fpr']:.4f}, {marg['ood_flagged']:.4f}")

    with staged_output(out, overwrite, EVALUATE_OUTPUTS) as staging:
        run_experiment(lambda c, o, **kw: echo_warnings(run_evaluation, c, o, **kw), cfg, staging, show,
                       progress=progress)


@app.command(cls=Command)
def score(
    detector_file: Annotated[Path, typer.Option(help="detector.safetensors written by `conformood evaluate`.")],
    inputs: Annotated[
        Path | None, typer.Option(help="npz with 'features' (or 'logits'), and 'labels' if Mondrian.")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="New images instead of --inputs: an image folder or archive, or an npz with "
                                  "'images' (and 'labels'); encoded by the backbone the detector records, or by "
                                  "--model / --backbone.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="With --images: model.safetensors from `conformood train`.")
    ] = None,
    backbone: Annotated[str | None, typer.Option(help="With --images: a registered backbone (frozen); default: the "
                                                 "detector's.")] = None,
    weights: Annotated[str, typer.Option(help=WEIGHTS_HELP)] = "imagenet",
    input_size: Annotated[int | None, typer.Option(help="With --backbone: the input size (default: the detector's, "
                                                   "else 224).")] = None,
    alpha: Annotated[float | None, typer.Option(help="Level of the decisions, in (0, 1); default: the α the "
                                                "detector was calibrated for, else 0.1.")] = None,
    logits: Annotated[bool, typer.Option(help="Score the 'logits' array instead of 'features'.")] = False,
    out: Annotated[Path, typer.Option(help="A folder (scores.json and scores.csv in it) or a .json file.")] = Path(
        "scores.json"
    ),
    csv: Annotated[
        Path | None, typer.Option(help="CSV file of the same table (default: OUT with the suffix .csv).")
    ] = None,
    skip_bad: Annotated[bool, typer.Option(help="With --images: leave out files that cannot be read as images and "
                                           "list them (a row each in the CSV, 'skipped' in the JSON) instead of "
                                           "stopping at the first.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing OUT and CSV files.")] = False,
    engine: Annotated[str, typer.Option(help="'single' (this process) or 'ray' (Ray Data workers; OUT is then a "
                                        "folder of parquet parts and summary.json; pip install "
                                        "'conformood[ray]').")] = "single",
    address: Annotated[str | None, typer.Option(help="With --engine ray: the cluster to join (e.g. 'auto' or "
                                                "'ray://head:10001'); default: a local one.")] = None,
    workers: Annotated[int, typer.Option(help="With --engine ray: scoring workers (actors).")] = 2,
    threads: Annotated[int | None, typer.Option(help="With --engine ray: threads per worker (default: this "
                                                "process's; the results equal the single process's with as "
                                                "many threads).")] = None,
    monitor_delta: Annotated[float | None, typer.Option(help="With --engine ray: also run the conformal test "
                                                        "martingale over the rows in their order; alarm level "
                                                        "1/δ.")] = None,
) -> None:
    """Apply a saved calibrated detector: per-input p-values, α-level flags and BH selection, one row per input
    (named by its image file, or its row in the features file, in that order)."""
    from ..experiments.deploy import score_file

    if alpha is not None:
        from .._validation import check_alpha

        user_errors(check_alpha, alpha, "--alpha")
    if engine not in ("single", "ray"):
        fail(f"--engine must be 'single' or 'ray', got {engine!r}")
    if engine == "ray":
        return _score_ray(detector_file, inputs, images, model, backbone, weights, input_size, alpha, logits, out,
                          csv, skip_bad, overwrite, address, workers, threads, monitor_delta)
    if (address, workers, threads, monitor_delta) != (None, 2, None, None):
        fail("--address, --workers, --threads and --monitor-delta apply with --engine ray")
    if out.suffix.lower() == ".csv":
        fail(f"--out {out} names the JSON result; give the CSV with --csv")
    if out.exists() and not out.is_dir() and not out.suffix:
        fail(f"--out {out} is a file without a suffix; give a folder or a .json file")
    if out.is_dir() or not out.suffix:
        out = out / "scores.json"
    csv = csv if csv is not None else out.with_suffix(".csv")
    if csv.resolve() == out.resolve():
        fail("--out and --csv must be different files")
    for option, path in (("--out", out), ("--csv", csv)):
        if path.is_dir():
            fail(f"{option} {path} is a folder; give a file name")
        if path.exists() and not overwrite:
            fail(f"{option} {path} exists; pass --overwrite to replace it")
    r = echo_warnings(score_file, detector_file, inputs, alpha, out, use_logits=logits, csv=csv, images=images,
                      model=model, backbone=backbone, weights=weights_option(weights), input_size=input_size,
                      skip_bad=skip_bad)
    pac = f"; PAC rule, δ={r['delta']}: flags p ≤ k/(n+1) below α" if r["delta"] is not None else ""
    if r["n_skipped"]:
        typer.echo(f"{r['n_skipped']} unreadable file(s) left out and listed in {csv}: "
                   f"{', '.join(s.split(': ', 1)[0] for s in r['skipped'][:3])}{' ...' if r['n_skipped'] > 3 else ''}",
                   err=True)
    typer.echo(f"{r['n']} inputs: {r['n_flagged']} flagged at α={r['alpha']} ({r['alpha_source']}{pac}), "
               f"{r['n_bh_selected']} selected by BH -> {out}, {csv}")


RAY_OUTPUTS = ("part-*.parquet", "summary.json")


def _score_ray(detector_file: Path, inputs: Path | None, images: Path | None, model: Path | None,
               backbone: str | None, weights: str, input_size: int | None, alpha: float | None, logits: bool,
               out: Path, csv: Path | None, skip_bad: bool, overwrite: bool, address: str | None, workers: int,
               threads: int | None, monitor_delta: float | None) -> None:
    from ..experiments.scale import RAY_HINT, ray_available, score_ray

    if not ray_available():
        fail(RAY_HINT)
    if csv is not None:
        fail("--csv applies to the single engine; --engine ray writes parquet parts into the folder --out")
    if out.suffix:
        fail(f"--out {out}: --engine ray writes a folder of parquet parts and summary.json; give a folder name")
    with staged_output(out, overwrite, RAY_OUTPUTS) as staging:
        r = echo_warnings(score_ray, detector_file, inputs, images, staging, alpha, use_logits=logits, model=model,
                          backbone=backbone, weights=weights_option(weights), input_size=input_size,
                          skip_bad=skip_bad, address=address, workers=workers, threads=threads, progress=True,
                          monitor=None if monitor_delta is None else {"delta": monitor_delta})
    if r["n_bad"]:
        typer.echo(f"{r['n_bad']} unreadable file(s) marked bad and counted in {out}/summary.json: "
                   f"{', '.join(s.split(': ', 1)[0] for s in r['bad'][:3])}{' ...' if r['n_bad'] > 3 else ''}",
                   err=True)
    watch = r["monitor"]
    alarm = "" if watch is None else (f"; monitor (δ={watch['delta']}): alarm at row {watch['alarm_row']} "
                                      f"({watch['alarm_input']})" if watch["alarm"] else
                                      f"; monitor (δ={watch['delta']}): no alarm")
    typer.echo(f"{r['n']} inputs on {workers} Ray worker(s): {r['n_flagged']} flagged at α={r['alpha']}, "
               f"{r['n_bh_selected']} selected by BH{alarm} -> {out}/ ({len(r['parts'])} parquet part(s), "
               "summary.json)")
