"""``conformood monitor``: watch a stream of feature batches with a saved calibrated detector.

Each batch is scored by the detector, given online conformal p-values and fed, in order, to a conformal test
martingale (:class:`conformood.monitor.ConformalMonitor`). The result JSON holds the p-values, the martingale
path, the batch boundaries and the alarm time; ``monitor.png`` draws the path against the alarm level 1/δ.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..conformal import ConformalDetector
from ..io import write_json
from ..monitor import ConformalMonitor
from ..report.monitor import plot_martingale
from ..results import result_header
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
