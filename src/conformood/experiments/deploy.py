"""``conformood score``, ``monitor`` and ``export``: a saved calibrated detector after deployment.

**score.** :func:`score_file` gives new inputs (a feature file, or images through the detector's own backbone or a
model) p-values, flags at the detector's stored α (unless another is given) and the Benjamini–Hochberg
selection; every row is named by its input (the image's ``class/file``, or its row in the feature file).

**monitor.** Each batch is scored by the detector, given online conformal p-values and fed, in order, to a
conformal test martingale (:class:`conformood.monitor.ConformalMonitor`). The result JSON holds the p-values,
the martingale path, the batch boundaries and the alarm time; ``monitor.png`` draws the path against
the alarm level 1/δ.

**export.** :func:`export_files` writes the standalone scorer of :mod:`conformood.export`, behind the encoder of
a model from ``conformood train`` when one is given (the program then takes images).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._validation import check_alpha
from ..conformal import ConformalDetector
from ..export import export_scorer
from ..io import write_json, write_text
from ..monitor import ConformalMonitor
from ..report.monitor import plot_martingale
from ..results import provenance, result_header
from .sources import check_feature_source, get_encoder, load_features

DEFAULT_ALPHA = 0.1  # the level of decisions when neither the call nor the detector gives one


def decision_level(cd: ConformalDetector, alpha: float | None) -> tuple[float, str]:
    """(α, where it came from): the one given, else the one the detector stores, else :data:`DEFAULT_ALPHA`."""
    if alpha is not None:
        return check_alpha(alpha), "given"
    if cd.alpha is not None:
        return check_alpha(cd.alpha), "stored in the detector"
    return DEFAULT_ALPHA, "default"


#: rows scored at once: every engine scores the same blocks of rows (row i is in block i // SCORE_BLOCK), so that
#: a detector whose arithmetic depends on the rows beside it (a matrix product) gives the same bits everywhere
SCORE_BLOCK = 1024


def score_rows(cd: ConformalDetector, x: np.ndarray, alpha: float, classes: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, p-values, flags at ``alpha``) of inputs ``x``, scored in blocks of :data:`SCORE_BLOCK` rows: the
    one computation of ``conformood score`` on one process and on Ray workers (:mod:`.scale`)."""
    parts = [cd.detector.score_samples(x[s:s + SCORE_BLOCK]) for s in range(0, len(x), SCORE_BLOCK)]
    scores = np.concatenate(parts) if parts else cd.detector.score_samples(x)
    return scores, cd.p_values_from_scores(scores, classes), cd.flags_from_scores(scores, alpha, classes)


def score_file(detector_file: str | os.PathLike, inputs: str | os.PathLike | None = None,
               alpha: float | None = None, out: str | os.PathLike = "scores.json", use_logits: bool = False,
               csv: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
               model: str | os.PathLike | None = None, backbone: str | None = None, weights: str | None = "imagenet",
               input_size: int | None = None, skip_bad: bool = False) -> dict:
    """Apply a saved calibrated detector to new inputs (a features file, or ``images`` through ``model`` or
    ``backbone``, by default the backbone the detector records); write per-input p-values and decisions as JSON
    (``out``) and CSV (``csv``, default ``out`` with the suffix ``.csv``). ``alpha`` defaults to the level stored
    in the detector (else 0.1). Features made otherwise than the detector's are refused. With ``skip_bad``,
    unreadable images are left out of the scoring and listed: a row each in the CSV (no score, the reason in the
    rule column) and ``skipped`` in the JSON; never dropped silently."""
    out = Path(out)
    csv_path = Path(csv) if csv is not None else out.with_suffix(".csv")
    if csv_path.resolve() == out.resolve():
        raise ValueError(f"the CSV {csv_path} would overwrite the JSON result {out}; give another name")
    cd = ConformalDetector.load(detector_file)
    alpha, alpha_source = decision_level(cd, alpha)
    feats = load_features(inputs, images, model, backbone, weights, input_size, fitted_source=cd.feature_source,
                          use_logits=use_logits, skip_bad=skip_bad)
    x = feats.logits if use_logits else feats.inputs()
    classes = feats.labels if cd.mondrian else None
    scores, p, flagged = score_rows(cd, x, alpha, classes)
    selected = cd.select_from_scores(scores, alpha, classes)
    names = feats.names if feats.names is not None else [str(i) for i in range(p.size)]
    rule = flag_rule(cd, alpha)
    row_rules = [rule["groups"][str(g) if cd.mondrian else "-1"]["text"]
                 for g in (classes if cd.mondrian else [None] * p.size)]
    result = {
        **result_header("score", {"detector_file": str(detector_file),
                                  "inputs": None if inputs is None else str(inputs),
                                  "images": None if images is None else str(images), "alpha": alpha,
                                  "alpha_source": alpha_source, "csv": str(csv_path), "use_logits": use_logits,
                                  "model": None if model is None else str(model), "backbone": backbone,
                                  "weights": weights if backbone else None, "input_size": input_size,
                                  "skip_bad": skip_bad},
                       inputs={"detector_file": detector_file, "inputs": inputs,
                               "images": images if images is not None and Path(images).is_file() else None,
                               "model": model}),
        "alpha": alpha,
        "alpha_source": alpha_source,
        "delta": rule["delta"],
        "rule": rule,
        "feature_source": feats.source,
        "n": int(p.size),
        "n_flagged": int(flagged.sum()),
        "n_bh_selected": int(selected.sum()),
        "input": names,
        "score": scores.tolist(),
        "p_value": p.tolist(),
        "flagged": flagged.tolist(),
        "bh_selected": selected.tolist(),
        "n_skipped": len(feats.skipped),
        "skipped": feats.skipped,
    }
    write_json(out, result)
    column = "image" if feats.names is not None else "index"
    rows = [f"{column},score,p_value,flagged,bh_selected,rule"] + [
        f"{_csv_field(name)},{s:.10g},{q:.10g},{int(f)},{int(b)},{_csv_field(text)}"
        for name, s, q, f, b, text in zip(names, scores, p, flagged, selected, row_rules)
    ] + [f"{_csv_field(bad.split(': ', 1)[0])},,,,,{_csv_field('skipped: ' + bad.split(': ', 1)[-1])}"
         for bad in feats.skipped]
    write_text(csv_path, "\n".join(rows) + "\n")
    return result


def flag_rule(cd: ConformalDetector, alpha: float) -> dict:
    """How the flags were decided, per calibration group: the marginal rule p ≤ α, or (calibrated with δ) the PAC
    rank k, which flags p ≤ k / (n + 1), stricter than α, so that rows with p ≤ α may stay unflagged."""
    delta = getattr(cd, "delta_", None)
    groups = {}
    for group, g in cd.decision_rule(alpha).items():
        text = (f"flag if p <= {g['p_limit']:.6g} (PAC rank {g['rank']} of n = {g['n']}: P(FPR > {alpha}) <= "
                f"{delta})" if delta is not None else f"flag if p <= {alpha} (marginal, n = {g['n']})")
        groups[group] = {"n": g["n"], "rank": g["rank"], "p_limit": g["p_limit"], "text": text}
    return {"kind": "pac" if delta is not None else "marginal", "alpha": alpha, "delta": delta, "groups": groups,
            "why": ("calibration-conditional: with probability >= 1 - delta over the calibration draw the deployed "
                    "false-alarm rate is <= alpha; a row with p <= alpha above the PAC limit is not flagged")
            if delta is not None else "marginal: P(flag an in-distribution input) <= alpha"}


def _csv_field(text: str) -> str:
    """A CSV field, quoted when it holds a comma, a quote or a line break."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text

MONITOR_OUTPUTS = ("monitor.json", "monitor.png")


def monitor_files(detector_file: str | os.PathLike, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                  delta: float = 0.01, martingale: str = "mixture", epsilon: float = 0.1, seed: int = 0,
                  use_logits: bool = False) -> dict:
    """Run the monitor over ``inputs`` (npz files, one batch each, in order); write ``monitor.json`` and
    ``monitor.png`` into the folder ``out``."""
    if not inputs:
        raise ValueError("give at least one input batch")
    cd = ConformalDetector.load(detector_file)
    monitor = ConformalMonitor(cd, delta=delta, martingale=martingale, epsilon=epsilon, seed=seed)
    starts, names = [], []
    result = monitor.result()
    for path in inputs:
        batch = load_features(inputs=path, fitted_source=cd.feature_source, use_logits=use_logits)
        x = batch.logits if use_logits else batch.inputs()
        starts.append(int(result.p_values.size))
        names.append(str(path))
        try:
            result = monitor.update(x)
        except ValueError as exc:
            raise ValueError(f"batch {path}: {exc}") from None
    alarm = result.alarm_time
    alarm_batch = None if alarm is None else int(np.searchsorted(starts, alarm, side="right") - 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"detector_file": str(detector_file), "inputs": names, "delta": monitor.delta,
              "martingale": martingale, "epsilon": monitor.epsilon, "seed": seed, "use_logits": use_logits}
    record = {
        **result_header("monitor", config, inputs={"detector_file": detector_file,
                                                   **{f"inputs[{i}]": p for i, p in enumerate(inputs)}}),
        "delta": monitor.delta,
        "alarm_level": 1.0 / monitor.delta,
        "n_calibration": int(monitor.reference.size),
        "n": int(result.p_values.size),
        "batch_starts": starts,
        "alarm": alarm is not None,
        "alarm_time": alarm,
        "alarm_batch": alarm_batch,
        "alarm_input": None if alarm is None else names[alarm_batch],
        "max_log10_martingale": float(result.log_martingale.max() / np.log(10)) if result.p_values.size else 0.0,
        "p_value": result.p_values.tolist(),
        "log_martingale": result.log_martingale.tolist(),
    }
    write_json(out / "monitor.json", record)
    plot_martingale(result.log_martingale, monitor.delta, starts, alarm, out / "monitor.png",
                    title=f"Conformal test martingale ({martingale}), {len(inputs)} batches, {record['n']} inputs")
    return record


def export_files(detector_file: str | os.PathLike, out: str | os.PathLike, alpha: float | None = None,
                 model: str | os.PathLike | None = None) -> dict:
    """Export the calibrated detector in ``detector_file`` at level α (default: the level it stores), behind the
    encoder of ``model`` when given (checked against the model the detector records), as one program at ``out``;
    returns its metadata."""
    import torch

    cd = ConformalDetector.load(detector_file)
    alpha, _ = decision_level(cd, alpha)
    encoder, example = None, None
    config = {"detector_file": str(detector_file), "model": None if model is None else str(model), "alpha": alpha,
              "out": str(out)}
    if model is not None:
        source = get_encoder(model=model)
        check_feature_source(cd.feature_source, source.record, str(model))
        net, model_cfg = source.net, source.model_config
        takes_logits = type(cd.detector).__name__ in ("MSPDetector", "EnergyDetector", "MaxLogitDetector")
        if takes_logits:
            if net.aux_head is None:
                raise ValueError(f"{detector_file} scores logits, but {model} has no classifier head")
            encoder = torch.nn.Sequential(net.encoder, net.aux_head).eval()
        else:
            encoder = net.encoder.eval()
        size = int(model_cfg.get("image_size", 16))
        example = torch.zeros(2, int(model_cfg["in_channels"]), size, size)
        with torch.no_grad():
            width = encoder(example).shape[1]
        expected = getattr(cd.detector, "n_features_in_", width)
        if width != expected:
            raise ValueError(f"{model} makes {width} features per image but {detector_file} was fitted on "
                             f"{expected}; give the model whose features calibrated the detector")
    else:
        width = getattr(cd.detector, "n_features_in_", None)
        if width is None:
            raise ValueError(f"{detector_file}: the detector records no input width")
        example = torch.zeros(2, int(width), dtype=torch.float32)
    inputs = {"detector_file": detector_file, **({"model": model} if model is not None else {})}
    return export_scorer(cd, alpha, example, out, encoder=encoder,
                         metadata={"provenance": provenance(config, inputs)})
