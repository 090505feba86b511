"""Scoring past one machine: a saved calibrated detector applied on Ray Data (``conformood score --engine ray``).

**How.** The driver loads the detector file with its checked loader (a file of another kind, or a tampered one,
is refused there, before any worker starts) and puts its bytes, with their SHA-256, in Ray's object store. The
inputs are cut into the blocks every engine scores (:data:`.deploy.SCORE_BLOCK` rows; block ``b`` holds rows
``b * SCORE_BLOCK`` up to the next block): feature rows, put once in the object store, or image files, which each
worker reads from the shared file system. A pool of actors loads the detector (and for images the encoder it
records) once per worker; each call scores one block with :func:`.deploy.score_rows`, the code of the single
process, on the same rows, in the same image batches and with the same number of threads, so scores, p-values
and flags equal the single process's bit for bit. The scored rows (a few numbers each) come back to the driver,
which checks that every row came exactly once, decides Benjamini–Hochberg over all p-values with the detector's
own :meth:`~conformood.conformal.ConformalDetector.select_from_scores`, and writes parquet parts and a summary.

**Faults.** A worker that dies mid-block is replaced and its block scored again by Ray (its partial output is
never used); rows are keyed by their index, so a block scored twice would be caught, not written twice. An
unreadable image stops the job with one line naming the file, or, with ``skip_bad``, becomes a row marked bad
(no score, the reason given) that is counted in the summary.

:func:`score_dataset` scores any Ray Dataset with a ``features`` column (e.g. ``ray.data.read_parquet`` over many
files, never gathered on the driver); there Ray chooses the batches, so the scores equal the single process's for
detectors whose score of a row does not depend on the rows scored beside it (the kNN family, the norms, the
logit scores: :data:`.scale_worker.ROW_EXACT`), and agree to rounding for the others.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..conformal import ConformalDetector
from ..io import file_digest, write_json
from ..results import result_header
from .deploy import SCORE_BLOCK, flag_rule
from .scale_worker import BlockScorer, ScoringModel, load_scoring_model
from .sources import check_feature_source, read_features

RAY_HINT = "the Ray engine needs ray: pip install 'conformood[ray]'"
PART_ROWS = 100_000  # rows per parquet part


def ray_available() -> bool:
    """Whether ray (with Ray Data) can be imported."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError(RAY_HINT) from None
    return ray


def score_ray(detector_file: str | os.PathLike, inputs: str | os.PathLike | None = None,
              images: str | os.PathLike | None = None, out: str | os.PathLike = "scores", alpha: float | None = None,
              use_logits: bool = False, model: str | os.PathLike | None = None, backbone: str | None = None,
              weights: str | None = "imagenet", input_size: int | None = None, skip_bad: bool = False,
              address: str | None = None, workers: int = 2, threads: int | None = None, progress: bool = False,
              monitor: dict | None = None) -> dict:
    """``conformood score --engine ray``: the saved calibrated detector applied to a features file (npz or
    parquet, read here) or an image folder (read by the workers) on a Ray cluster (``address``; None starts a
    local one, or uses the one this process is connected to) with ``workers`` actors of ``threads`` threads.
    Writes ``part-NNNNN.parquet`` (row, name, score, p_value, flag, bh_selected, bad) and ``summary.json`` into
    the folder ``out``; returns the summary. ``monitor`` (:class:`~conformood.monitor.ConformalMonitor`'s
    options, e.g. ``{"delta": 0.01}``) also runs the conformal test martingale over the rows in their given order
    (file order; a bad row is not part of the stream): columns ``monitor_p_value`` and ``log_martingale``, and the
    alarm in the summary."""
    from .._validation import check_positive_int

    start = time.perf_counter()
    if (inputs is None) == (images is None):
        raise ValueError("give exactly one of a features file (--inputs) or images (--images)")
    if inputs is not None and (model is not None or backbone is not None):
        raise ValueError("--model and --backbone encode --images; a features file is scored as it is")
    workers = check_positive_int(workers, "workers")
    if images is not None:
        _image_folder(images)
    cd, scoring = load_scoring_model(detector_file, alpha, images is not None, model, backbone, weights, input_size,
                                     threads, use_logits)
    watch = None
    if monitor is not None:
        from ..monitor import ConformalMonitor

        watch = ConformalMonitor(cd, **monitor)  # its options checked before any worker starts
    payload, names, origin = _payload(cd, inputs, images, use_logits)
    n = len(names)
    if n == 0:
        raise ValueError(f"{inputs if inputs is not None else images}: no rows to score")
    ray = _ray()
    t0 = time.perf_counter()
    started = _connect(ray, address, workers)
    t_start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # Ray's own deprecation notes about its settings are not the user's
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
            warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\.")
            found = _run_blocks(ray, scoring, payload, n, workers, skip_bad, progress)
        t_score = time.perf_counter() - t0
    finally:
        if started:
            ray.shutdown()
    good = found["bad"] == ""
    classes = payload["labels"][good] if cd.mondrian else None
    selected = np.zeros(n, bool)
    if good.any():
        selected[good] = cd.select_from_scores(found["score"][good], scoring.alpha, classes)
    monitored = _monitor(watch, found, good, names)
    t0 = time.perf_counter()
    parts = _write_parts(Path(out), found, names, selected)
    bad = [f"{names[i]}: {found['bad'][i]}" for i in np.flatnonzero(~good)]
    config = {"detector_file": str(detector_file), "inputs": None if inputs is None else str(inputs),
              "images": None if images is None else str(images), "alpha": scoring.alpha, "use_logits": use_logits,
              "model": None if model is None else str(model), "backbone": backbone, "skip_bad": skip_bad,
              "engine": "ray", "address": address, "workers": workers, "threads": scoring.threads}
    summary = {
        **result_header("score", config, inputs={"detector_file": detector_file, "inputs": inputs, "model": model}),
        "engine": {"name": "ray", "ray_version": ray.__version__, "address": address, "workers": workers,
                   "threads_per_worker": scoring.threads, "block_rows": SCORE_BLOCK, "detector_sha256": scoring.sha256},
        "alpha": scoring.alpha, "rule": flag_rule(cd, scoring.alpha), "feature_source": origin["source"],
        "n": n, "n_scored": int(good.sum()), "n_flagged": int(found["flag"].sum()),
        "n_bh_selected": int(selected.sum()), "n_bad": len(bad), "bad": bad, "parts": parts, "monitor": monitored,
        "seconds": {"ray_start": t_start, "workers_ready": found["workers_ready_s"], "scoring": t_score,
                    "writing": time.perf_counter() - t0,
                    "total": time.perf_counter() - start},
    }
    write_json(Path(out) / "summary.json", summary)
    return summary


def _monitor(watch: Any, found: dict[str, np.ndarray], good: np.ndarray, names: list[str]) -> dict | None:
    """The martingale over the scored rows in their order (the single process's ``monitor`` on one batch)."""
    if watch is None:
        return None
    result = watch.update_scores(found["score"][good])
    rows = np.flatnonzero(good)
    found["monitor_p_value"] = np.full(good.size, np.nan)
    found["log_martingale"] = np.full(good.size, np.nan)
    found["monitor_p_value"][rows], found["log_martingale"][rows] = result.p_values, result.log_martingale
    alarm = None if result.alarm_time is None else int(rows[result.alarm_time])
    return {"delta": watch.delta, "martingale": watch.martingale, "alarm": alarm is not None, "alarm_row": alarm,
            "alarm_input": None if alarm is None else names[alarm],
            "max_log10_martingale": float(result.log_martingale.max() / np.log(10)) if rows.size else 0.0}


def _payload(cd: ConformalDetector, inputs: Any, images: Any, use_logits: bool) -> tuple[dict, list[str], dict]:
    """What the workers read: feature rows (``x``) or image ``paths``, with ``labels`` and the row ``names``."""
    if inputs is not None:
        feats = read_features(inputs)
        if use_logits and feats.logits is None:
            raise ValueError(f"{feats.origin} has no 'logits' array")
        check_feature_source(cd.feature_source, feats.source, feats.origin)
        from .._validation import check_features

        x = feats.logits if use_logits else feats.inputs()
        if x.ndim == 2:  # checked here, naming the file, before any worker starts (patch features: by the workers)
            width = getattr(cd.detector, "n_features_in_", None)
            try:
                check_features(x, "logits" if use_logits else "features", n_features=width)
            except ValueError as exc:
                raise ValueError(f"{feats.origin}: {exc}") from None
        x = np.ascontiguousarray(x)
        if cd.mondrian and feats.labels is None:
            raise ValueError(f"{feats.origin} has no 'labels': the detector is calibrated per class (Mondrian)")
        labels = feats.labels if feats.labels is not None else np.zeros(len(x), np.int64)
        names = feats.names if feats.names is not None else [str(i) for i in range(len(x))]
        return {"x": x, "labels": labels}, names, {"source": feats.source}
    from ..data import list_image_folder

    path = _image_folder(images)
    files, class_names = list_image_folder(path)
    if not files:
        raise ValueError(f"no images found under {path}/<class>/")
    lookup = {c: i for i, c in enumerate(class_names)}
    names = [f"{cls}/{f.name}" for cls, f in files]
    payload = {"paths": [str(f.resolve()) for _, f in files], "names": names,
               "labels": np.array([lookup[cls] for cls, _ in files], np.int64)}
    return payload, names, {"source": cd.feature_source}


def _image_folder(images: str | os.PathLike) -> Path:
    path = Path(images)
    if not path.exists():
        raise FileNotFoundError(f"no image folder at {path}")
    if not path.is_dir():
        raise ValueError(f"{path}: the Ray engine reads image folders (class/*.png, read by every worker); unpack "
                         "an archive, or score it with the single process")
    return path


def _connect(ray: Any, address: str | None, workers: int) -> bool:
    """Connect to the cluster at ``address`` or start a local one (True: started here, shut down after)."""
    import logging

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    logging.getLogger("ray").setLevel(logging.ERROR)  # Ray's notes to operators stay in its logs (/tmp/ray)
    try:
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    except ConnectionError as exc:
        raise ValueError(f"no Ray cluster at {address}: {exc}") from None
    return True


def _run_blocks(ray: Any, scoring: ScoringModel, payload: dict, n: int, workers: int, skip_bad: bool,
                progress: bool) -> dict[str, np.ndarray]:
    """Score every block on an actor pool; the rows in order, each exactly once."""
    from tqdm.auto import tqdm

    ray.data.DataContext.get_current().enable_progress_bars = False
    n_blocks = -(-n // SCORE_BLOCK)
    workers = min(workers, n_blocks)  # no idle actors
    per_call = max(1, -(-n_blocks // (4 * workers)))  # a few calls per worker: Ray's cost per call is amortised
    blocks = ray.data.from_items([{"block": b} for b in range(n_blocks)])
    scored = blocks.map_batches(BlockScorer, batch_size=per_call, batch_format="numpy", num_cpus=1,
                                compute=ray.data.ActorPoolStrategy(size=workers),
                                fn_constructor_kwargs={"model": ray.put(scoring), "payload": ray.put(payload),
                                                       "skip_bad": skip_bad})
    parts, begun = [], time.time()
    try:
        with tqdm(total=n, desc="scoring (ray)", unit="row", disable=not progress) as bar:
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                failed = [e for e in batch["error"] if e]
                if failed:  # the worker's one line; the job is cancelled when its iterator is dropped
                    kind, message = str(failed[0]).split(": ", 1)
                    raise (OSError if kind in ("OSError", "FileNotFoundError", "PermissionError")
                           else ValueError)(message)
                parts.append(batch)
                bar.update(len(batch["row"]))
    except (ValueError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - anything else from Ray: one line naming what failed
        raise RuntimeError(f"the Ray job failed: {' '.join(str(exc).split())[:500]}") from exc
    found = {key: np.concatenate([p[key] for p in parts]) for key in parts[0] if key != "error"}
    order = np.argsort(found["row"], kind="stable")
    found = {key: value[order] for key, value in found.items()}
    found["workers_ready_s"] = float(found.pop("ready").min() - begun)
    if not np.array_equal(found["row"], np.arange(n)):
        raise RuntimeError(f"the Ray job returned {found['row'].size} rows for {n} inputs (rows lost or repeated)")
    return found


def _write_parts(out: Path, found: dict[str, np.ndarray], names: list[str], selected: np.ndarray) -> list[dict]:
    """``part-NNNNN.parquet`` of :data:`PART_ROWS` rows each, written atomically; their rows and SHA-256."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..io import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for i, s in enumerate(range(0, max(len(names), 1), PART_ROWS)):
        e = min(len(names), s + PART_ROWS)
        columns = {"row": found["row"][s:e], "name": names[s:e], "score": found["score"][s:e],
                   "p_value": found["p_value"][s:e], "flag": found["flag"][s:e], "bh_selected": selected[s:e],
                   "bad": found["bad"][s:e].astype(str)}
        for key in ("monitor_p_value", "log_martingale"):
            if key in found:
                columns[key] = found[key][s:e]
        table = pa.table(columns)
        path = out / f"part-{i:05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        parts.append({"file": path.name, "rows": e - s, "sha256": file_digest(path)})
    return parts


def score_dataset(dataset: Any, detector_file: str | os.PathLike, alpha: float | None = None, workers: int = 2,
                  threads: int | None = None, batch_size: int = SCORE_BLOCK) -> Any:
    """A Ray Dataset with a ``features`` column (one vector per row; ``labels`` too for a Mondrian detector)
    scored lazily by the calibrated detector in ``detector_file``: the rows gain ``score``, ``p_value`` and
    ``flag`` (the ``features`` column is dropped). Global decisions need all p-values: collect ``p_value``
    (small) and call :func:`conformood.conformal.benjamini_hochberg`, or the detector's ``select_from_scores``
    on the collected scores. Scores equal the single process's for :data:`.scale_worker.ROW_EXACT` detectors."""
    ray = _ray()
    _, scoring = load_scoring_model(detector_file, alpha, threads=threads)
    if "features" not in dataset.columns():
        raise ValueError(f"the dataset needs a 'features' column; it has {dataset.columns()}")
    return dataset.map_batches(BlockScorer, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                               compute=ray.data.ActorPoolStrategy(size=workers),
                               fn_constructor_kwargs={"model": ray.put(scoring)})
