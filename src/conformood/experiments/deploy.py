"""``conformood monitor`` and ``conformood export``: a saved calibrated detector after deployment.

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

from ..conformal import ConformalDetector
from ..export import export_scorer
from ..io import write_json
from ..monitor import ConformalMonitor
from ..report.monitor import plot_martingale
from ..results import provenance, result_header
from .evaluate import load_feature_file

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
        split = load_feature_file(path)
        x = split.logits if use_logits else split.features
        if x is None:
            raise ValueError(f"{path} has no '{'logits' if use_logits else 'features'}' array")
        starts.append(int(result.p_values.size))
        names.append(str(path))
        result = monitor.update(x)
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


def export_files(detector_file: str | os.PathLike, out: str | os.PathLike, alpha: float,
                 model: str | os.PathLike | None = None) -> dict:
    """Export the calibrated detector in ``detector_file`` at level α, behind the encoder of ``model`` when
    given, as one program at ``out``; returns its metadata."""
    import torch

    cd = ConformalDetector.load(detector_file)
    encoder, example = None, None
    config = {"detector_file": str(detector_file), "model": None if model is None else str(model), "alpha": alpha,
              "out": str(out)}
    if model is not None:
        from ..train.recipes import load_trained_model

        net, model_cfg = load_trained_model(model)
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
