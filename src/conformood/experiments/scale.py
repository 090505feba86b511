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
logit scores: :data:`ROW_EXACT`), and agree to rounding for the others.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..conformal import ConformalDetector
from ..io import file_digest, write_json
from ..results import result_header
from .deploy import SCORE_BLOCK, decision_level, flag_rule, score_rows
from .sources import check_feature_source, get_encoder, read_features
from .sources.routes import encoder_from_record

RAY_HINT = "the Ray engine needs ray: pip install 'conformood[ray]'"
IMAGE_BATCH = 128  # images encoded at once: image_features' batch, which a block of SCORE_BLOCK rows divides
PART_ROWS = 100_000  # rows per parquet part
#: detectors whose score of a row never depends on the other rows of its batch (the kNN search re-scores its
#: candidates exactly, row by row; the others are elementwise)
ROW_EXACT = ("knn_cosine", "knn_cosine_norm", "knn_sun", "l2_norm", "msp", "energy", "maxlogit")


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


@dataclass
class ScoringModel:
    """What every worker gets: the checked detector file's bytes and digest, the decision level, and for images
    the encoder to rebuild (``encoder``: get_encoder's arguments) with the image batch and thread count."""

    blob: bytes
    sha256: str
    alpha: float
    encoder: dict | None = None
    threads: int = 1
    use_logits: bool = False


def load_scoring_model(detector_file: str | os.PathLike, alpha: float | None = None, images: bool = False,
                       model: str | os.PathLike | None = None, backbone: str | None = None,
                       weights: str | None = "imagenet", input_size: int | None = None, threads: int | None = None,
                       use_logits: bool = False) -> tuple[ConformalDetector, ScoringModel]:
    """The calibrated detector, loaded and checked on the driver, and the :class:`ScoringModel` for workers.
    ``threads`` per worker defaults to this process's torch threads: the count the single process scores with."""
    import torch

    from .._validation import check_positive_int

    path = Path(detector_file)
    cd = ConformalDetector.load(path)  # refuses another kind, a flipped byte, edited settings
    blob = path.read_bytes()
    alpha, _ = decision_level(cd, alpha)
    encoder = None
    if images:
        if model is None and backbone is None:
            backbone, weights, input_size = encoder_from_record(cd.feature_source)
        encoder = {"model": None if model is None else str(Path(model).resolve()), "backbone": backbone,
                   "weights": weights, "input_size": input_size}
        check_feature_source(cd.feature_source, get_encoder(**encoder).record, "the images")
    threads = torch.get_num_threads() if threads is None else check_positive_int(threads, "threads")
    return cd, ScoringModel(blob, hashlib.sha256(blob).hexdigest(), alpha, encoder, threads, use_logits)


class BlockScorer:
    """A Ray actor: loads the detector (and encoder) once, then scores blocks (``block`` column) of the inputs
    in ``payload`` (``x`` and ``labels`` arrays, or image ``paths`` and ``labels``), or rows of a ``features``
    column. Returns ``row``, ``score``, ``p_value``, ``flag`` and ``bad`` (why a row has no score; empty)."""

    def __init__(self, model: ScoringModel, payload: dict | None = None, skip_bad: bool = False) -> None:
        import ray
        import torch
        from threadpoolctl import threadpool_limits

        model = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        payload = ray.get(payload) if isinstance(payload, ray.ObjectRef) else payload
        if hashlib.sha256(model.blob).hexdigest() != model.sha256:
            raise ValueError("the detector's bytes changed on their way to the worker")
        torch.set_num_threads(model.threads)
        self._limits = threadpool_limits(model.threads)  # BLAS as the single process: same sums, same bits
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "detector.safetensors").write_bytes(model.blob)
            self.cd = ConformalDetector.load(Path(tmp) / "detector.safetensors")
        self.model, self.payload, self.skip_bad = model, payload or {}, skip_bad
        self.encoder = get_encoder(**model.encoder) if model.encoder is not None else None
        self.ready = time.time()  # when this worker could score: the engine's start-up ends at the first one

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "block" not in batch:  # rows of a Ray Dataset
            x = np.stack(list(batch["features"])) if batch["features"].dtype == object else batch["features"]
            labels = batch.get("labels") if self.cd.mondrian else None
            scores, p, flag = score_rows(self.cd, x, self.model.alpha, labels)
            return {**{k: v for k, v in batch.items() if k != "features"}, "score": scores, "p_value": p,
                    "flag": flag}
        try:
            parts = [self._block(int(b)) for b in batch["block"]]
        except (ValueError, OSError) as exc:  # a user error travels back as data: Ray's wrapper would lose it
            return {"row": np.array([-1]), "score": np.array([np.nan]), "p_value": np.array([np.nan]),
                    "flag": np.array([False]), "bad": np.array([""]), "ready": np.array([self.ready]),
                    "error": np.array([f"{type(exc).__name__}: {exc}"])}
        out = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        return {**out, "ready": np.full(out["row"].size, self.ready), "error": np.full(out["row"].size, "")}

    def _block(self, block: int) -> dict[str, np.ndarray]:
        n = len(self.payload["labels"])
        rows = np.arange(block * SCORE_BLOCK, min(n, (block + 1) * SCORE_BLOCK))
        bad = np.full(rows.size, "", dtype=object)
        if self.encoder is None:
            x = self.payload["x"][rows[0]:rows[-1] + 1]
        else:
            x, bad = self._encode(rows)
        keep = bad == ""
        labels = self.payload["labels"][rows][keep] if self.cd.mondrian else None
        scores = np.full(rows.size, np.nan)
        p = np.full(rows.size, np.nan)
        flag = np.zeros(rows.size, bool)
        if keep.any():
            scores[keep], p[keep], flag[keep] = score_rows(self.cd, x, self.model.alpha, labels)
        return {"row": rows, "score": scores, "p_value": p, "flag": flag, "bad": bad.astype(str)}

    def _encode(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features of the block's images, read and brought to the encoder's input as ``read_images`` does."""
        import torch

        from ..data import decode_image
        from ..data.arrays import resize_bilinear

        size = tuple(self.encoder.record["input_size"])
        images, bad = [], np.full(rows.size, "", dtype=object)
        for i, row in enumerate(rows):
            path = Path(self.payload["paths"][row])
            try:
                raw = path.read_bytes()
                arr = decode_image(raw, "RGB", None)
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; each is one line naming the file
                why = "an empty file" if path.is_file() and path.stat().st_size == 0 else \
                    f"not a readable image ({type(exc).__name__}: {exc})"
                if not self.skip_bad:
                    raise ValueError(f"{self.payload['names'][row]} is {why} (--skip-bad marks such rows bad and "
                                     "counts them)") from None
                bad[i] = why
                continue
            images.append(resize_bilinear(torch.from_numpy(arr[None].astype(np.float32) / 255.0), size)[0])
        if not images:
            return np.empty((0, 0), np.float32), bad
        if self.model.use_logits:
            return self.encoder.logits(torch.stack(images)), bad
        return self.encoder.encode(torch.stack(images), batch_size=IMAGE_BATCH, cache=False), bad


def score_ray(detector_file: str | os.PathLike, inputs: str | os.PathLike | None = None,
              images: str | os.PathLike | None = None, out: str | os.PathLike = "scores", alpha: float | None = None,
              use_logits: bool = False, model: str | os.PathLike | None = None, backbone: str | None = None,
              weights: str | None = "imagenet", input_size: int | None = None, skip_bad: bool = False,
              address: str | None = None, workers: int = 2, threads: int | None = None, progress: bool = False
              ) -> dict:
    """``conformood score --engine ray``: the saved calibrated detector applied to a features file (npz or
    parquet, read here) or an image folder (read by the workers) on a Ray cluster (``address``; None starts a
    local one, or uses the one this process is connected to) with ``workers`` actors of ``threads`` threads.
    Writes ``part-NNNNN.parquet`` (row, name, score, p_value, flag, bh_selected, bad) and ``summary.json`` into
    the folder ``out``; returns the summary."""
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
    payload, names, origin = _payload(cd, inputs, images, use_logits)
    n = len(names)
    ray = _ray()
    t0 = time.perf_counter()
    started = _connect(ray, address, workers)
    t_start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # Ray's own deprecation notes about its settings are not the user's
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")
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
    t0 = time.perf_counter()
    parts = _write_parts(Path(out), found, names, selected)
    bad = [f"{names[i]}: {found['bad'][i]}" for i in np.flatnonzero(~good)]
    import ray as _ray_module

    config = {"detector_file": str(detector_file), "inputs": None if inputs is None else str(inputs),
              "images": None if images is None else str(images), "alpha": scoring.alpha, "use_logits": use_logits,
              "model": None if model is None else str(model), "backbone": backbone, "skip_bad": skip_bad,
              "engine": "ray", "address": address, "workers": workers, "threads": scoring.threads}
    summary = {
        **result_header("score", config, inputs={"detector_file": detector_file, "inputs": inputs, "model": model}),
        "engine": {"name": "ray", "ray_version": _ray_module.__version__, "address": address, "workers": workers,
                   "threads_per_worker": scoring.threads, "block_rows": SCORE_BLOCK, "detector_sha256": scoring.sha256},
        "alpha": scoring.alpha, "rule": flag_rule(cd, scoring.alpha), "feature_source": origin["source"],
        "n": n, "n_scored": int(good.sum()), "n_flagged": int(found["flag"].sum()),
        "n_bh_selected": int(selected.sum()), "n_bad": len(bad), "bad": bad, "parts": parts,
        "seconds": {"ray_start": t_start, "workers_ready": found["workers_ready_s"], "scoring": t_score,
                    "writing": time.perf_counter() - t0,
                    "total": time.perf_counter() - start},
    }
    write_json(Path(out) / "summary.json", summary)
    return summary


def _payload(cd: ConformalDetector, inputs: Any, images: Any, use_logits: bool) -> tuple[dict, list[str], dict]:
    """What the workers read: feature rows (``x``) or image ``paths``, with ``labels`` and the row ``names``."""
    if inputs is not None:
        feats = read_features(inputs)
        if use_logits and feats.logits is None:
            raise ValueError(f"{feats.origin} has no 'logits' array")
        check_feature_source(cd.feature_source, feats.source, feats.origin)
        x = np.ascontiguousarray(feats.logits if use_logits else feats.inputs())
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
        table = pa.table({"row": found["row"][s:e], "name": names[s:e], "score": found["score"][s:e],
                          "p_value": found["p_value"][s:e], "flag": found["flag"][s:e],
                          "bh_selected": selected[s:e], "bad": found["bad"][s:e].astype(str)})
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
    on the collected scores. Scores equal the single process's for :data:`ROW_EXACT` detectors."""
    ray = _ray()
    _, scoring = load_scoring_model(detector_file, alpha, threads=threads)
    if "features" not in dataset.columns():
        raise ValueError(f"the dataset needs a 'features' column; it has {dataset.columns()}")
    return dataset.map_batches(BlockScorer, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                               compute=ray.data.ActorPoolStrategy(size=workers),
                               fn_constructor_kwargs={"model": ray.put(scoring)})
