"""The workers of the Ray engine (:mod:`.scale`): what they are given (:class:`ScoringModel`, built and checked on
the driver by :func:`load_scoring_model`) and the actor that scores blocks of rows (:class:`BlockScorer`) with
:func:`.deploy.score_rows`, the single process's code. Ray itself is imported only inside the actor."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..conformal import ConformalDetector
from .deploy import SCORE_BLOCK, decision_level, score_rows
from .sources import check_feature_source, get_encoder
from .sources.routes import encoder_from_record

IMAGE_BATCH = 128  # images encoded at once: image_features' batch, which a block of SCORE_BLOCK rows divides
#: detectors whose score of a row never depends on the other rows of its batch (the kNN search re-scores its
#: candidates exactly, row by row; the others are elementwise)
ROW_EXACT = ("knn_cosine", "knn_cosine_norm", "knn_sun", "l2_norm", "msp", "energy", "maxlogit")


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
        from ..data.image_folder import encoder_input, unreadable

        size = tuple(self.encoder.record["input_size"])
        images, bad = [], np.full(rows.size, "", dtype=object)
        for i, row in enumerate(rows):
            raw = b""
            try:
                raw = Path(self.payload["paths"][row]).read_bytes()
                arr = decode_image(raw, "RGB", None)
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; each is one line naming the file
                why = unreadable(raw, exc)
                if not self.skip_bad:
                    raise ValueError(f"{self.payload['names'][row]} is {why} (--skip-bad marks such rows bad and "
                                     "counts them)") from None
                bad[i] = why
                continue
            images.append(encoder_input(arr, size))
        if not images:
            return np.empty((0, 0), np.float32), bad
        if self.model.use_logits:
            return self.encoder.logits(torch.stack(images)), bad
        return self.encoder.encode(torch.stack(images), batch_size=IMAGE_BATCH, cache=False), bad

