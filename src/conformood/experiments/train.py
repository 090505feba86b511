"""``conformood train`` as an experiment: load the data of a recipe, join the ``torchrun`` process group, train
with :func:`conformood.train.recipes.train_contrastive_encoder`, and write the model, the resumable checkpoint,
``train.json`` and the diagnostics figure."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .. import distributed as dist_utils
from ..data import (
    ImageArrays,
    load_image_folder,
    resize_images,
    train_calibration_test_split,
)
from ..io import save_state, write_json
from ..results import environment, result_header
from ..train.objective_registry import OBJECTIVES
from ..train.recipes import MODEL_KIND, encoder_options_for, train_contrastive_encoder
from ..train.run_config import TrainRunConfig


def _load(cfg: TrainRunConfig, part: str = "train") -> ImageArrays:
    """The training (or test) part of a named data set (seeded 60/20/20 split, as evaluate uses), or of an
    image folder (its ``cfg.split`` sub-folder, or ``test``)."""
    from ..data import DATASETS, load_named

    if cfg.data in DATASETS:
        data = load_named(cfg.data)
        split = train_calibration_test_split(data.labels, seed=cfg.seed)
        return data.subset(split.train if part == "train" else split.test)
    return load_image_folder(cfg.data, split=cfg.split if part == "train" else "test")


def _evaluation_callbacks(cfg: TrainRunConfig, train_images: torch.Tensor):
    """Feature norms and s_con AUROC per epoch (every ``cfg.eval_every``) on the test part of the data, the
    normal class against the others (at most ``cfg.eval_max_images`` images, drawn with ``cfg.seed``)."""
    from ..train.callbacks import AUROCCallback, FeatureNormCallback

    test = _load(cfg, "test")
    rng = np.random.default_rng(cfg.seed)
    keep = np.sort(rng.permutation(len(test.labels))[: cfg.eval_max_images])
    test = test.subset(keep)
    is_inlier = test.labels == test.class_index(cfg.normal_class)
    x = resize_images(test.tensor(), (cfg.image_size, cfg.image_size))
    bank = train_images[np.sort(rng.permutation(train_images.shape[0])[: cfg.eval_max_images])]
    norms = FeatureNormCallback(x[is_inlier], x[~is_inlier], every=cfg.eval_every)
    aurocs = AUROCCallback(bank, x, is_inlier, n_neighbors=cfg.eval_n_neighbors, every=cfg.eval_every)
    return norms, aurocs


def _init_process_group(device: str) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; False when run alone."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def run_training(cfg: TrainRunConfig, out_dir: str | Path, progress: bool = True, resume: bool = False) -> dict:
    """Train and write ``checkpoint.safetensors`` (resumable), ``model.safetensors`` and ``train.json``."""
    import torch.distributed as dist

    out = Path(out_dir)
    started_group = _init_process_group(cfg.device)
    device = cfg.device
    if device.startswith("cuda") and dist_utils.is_distributed():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        start = time.perf_counter()
        data = _load(cfg)
        if cfg.normal_class is not None:
            data = data.subset((data.labels == data.class_index(cfg.normal_class)).nonzero()[0])
        if cfg.max_images is not None and len(data.labels) > cfg.max_images:
            keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(data.labels))[: cfg.max_images])
            data = data.subset(keep)
        images = resize_images(data.tensor(), (cfg.image_size, cfg.image_size))
        diagnostics = _evaluation_callbacks(cfg, images) if cfg.eval_every else ()
        trained_epochs: list = []  # one entry per epoch trained by this invocation (0 when resuming a finished run)
        model, history = train_contrastive_encoder(
            images, cfg, out / "checkpoint.safetensors", resume=resume, progress=progress, device=device,
            labels=data.labels if OBJECTIVES.info(cfg.objective).needs_labels else None,
            callbacks=(*diagnostics, trained_epochs.append),
        )
        aux = model.aux_head.n_classes if model.aux_head is not None else None
        result = {
            **result_header("train", asdict(cfg), inputs={
                "data": cfg.data if Path(cfg.data).exists() else None, "oe_pool": cfg.oe_pool}),
            "model": {"in_channels": images.shape[1], "widths": list(cfg.widths), "projection_dim": cfg.projection_dim,
                      "image_size": cfg.image_size, "seed": cfg.seed, "data": cfg.data, "aux_classes": aux,
                      "encoder": cfg.encoder, "head": cfg.head, "objective": cfg.objective,
                      "normal_class": cfg.normal_class, "split": cfg.split,
                      "encoder_options": encoder_options_for(cfg, for_loading=True) or None},
            "n_train": int(images.shape[0]),
            "world_size": dist_utils.world_size(),
            "rank": dist_utils.rank(),
            "history": asdict(history),
            "epochs_trained_now": len(trained_epochs),
            "wall_time_s": time.perf_counter() - start,
            "environment": environment(device=device),
        }
        if diagnostics:
            norms, aurocs = diagnostics
            result["diagnostics"] = {
                "epochs": aurocs.epochs, "auroc": aurocs.aurocs, "aulc": aurocs.aulc if aurocs.epochs else None,
                "inlier_feature_norm": norms.inlier_norm, "outlier_feature_norm": norms.outlier_norm,
                "note": "epochs trained in this invocation (a resumed run records from where it resumed)",
            }
        if dist_utils.rank() == 0:
            save_state(out / "model.safetensors", model.state_dict(), result["model"], kind=MODEL_KIND)
            write_json(out / "train.json", result)
            if diagnostics and diagnostics[1].epochs:
                from ..report.plots import plot_training_diagnostics

                plot_training_diagnostics(out / "diagnostics.png", *diagnostics)
        return result
    finally:
        if started_group:
            dist.destroy_process_group()


