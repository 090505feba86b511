"""``conformood train``: train a contrastive encoder on a dataset, on one process or under ``torchrun``."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .. import distributed as dist_utils
from .._validation import check_positive_int
from ..augment import SimCLRViews, ViewConfig
from ..data import (
    ImageArrays,
    load_image_folder,
    resize_images,
    train_calibration_test_split,
)
from ..io import save_state, write_json
from ..models import small_contrastive_model
from .objectives import FIRMRotationObjective, NTXentObjective
from .trainer import TrainConfig, Trainer

OBJECTIVES = ("firm", "ntxent", "supcon", "supcon_multiclass", "firm_oe", "oecl_oe")
OE_OBJECTIVES = ("firm_oe", "oecl_oe")
MODEL_KIND = "ContrastiveModel"


@dataclass
class TrainRunConfig:
    """What ``conformood train`` trains: data, objective, model size and optimisation."""

    data: str = "digits"
    split: str | None = "train"
    normal_class: str | None = None
    objective: str = "firm"
    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.1
    temperature: float = 0.2
    image_size: int = 16
    crop_scale_min: float = 0.6
    flip: bool = False
    widths: tuple[int, int, int] = (32, 64, 128)
    projection_dim: int = 64
    seed: int = 0
    device: str = "cpu"
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int | None = None
    oe_pool: str | None = None
    oe_alpha: float = 1.0
    oe_warmup_epochs: int = 0
    max_images: int | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective in OE_OBJECTIVES and not self.oe_pool:
            raise ValueError(f"objective {self.objective!r} needs oe_pool: an .npz with an image array 'x'")
        if self.max_images is not None:
            check_positive_int(self.max_images, "max_images", minimum=2)
        check_positive_int(self.image_size, "image_size", minimum=4)
        self.widths = tuple(int(w) for w in self.widths)  # type: ignore[assignment]


def build_objective(cfg: TrainRunConfig, views: SimCLRViews, image_shape: tuple[int, int, int]):
    """The training objective named by ``cfg.objective`` (outlier-exposure pools conformed to the images)."""
    from ..augment import OutlierExposurePool
    from .objectives import FIRMOutlierExposureObjective, OECLObjective, SupConRotationObjective

    gather = dist_utils.is_distributed()
    if cfg.objective == "firm":
        return FIRMRotationObjective(views, cfg.temperature, gather_distributed=gather)
    if cfg.objective == "ntxent":
        return NTXentObjective(views, cfg.temperature, gather_distributed=gather)
    if cfg.objective in ("supcon", "supcon_multiclass"):
        return SupConRotationObjective(views, cfg.temperature, binary=cfg.objective == "supcon", gather_distributed=gather)
    pool = OutlierExposurePool.from_npz(cfg.oe_pool, image_shape)
    if cfg.objective == "firm_oe":
        return FIRMOutlierExposureObjective(views, pool, cfg.temperature, gather_distributed=gather)
    return OECLObjective(views, pool, cfg.temperature, alpha=cfg.oe_alpha, warmup_epochs=cfg.oe_warmup_epochs)


def load_train_config(path: str | os.PathLike, **overrides) -> TrainRunConfig:
    """A :class:`TrainRunConfig` from a YAML recipe (keys = its fields); ``overrides`` win over the file."""
    import yaml

    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of TrainRunConfig fields")
    data.pop("description", None)
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainRunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; known: {sorted(known)}")
    if "widths" in data:
        data["widths"] = tuple(data["widths"])
    return TrainRunConfig(**data)


def train_contrastive_encoder(
    images: torch.Tensor,
    cfg: TrainRunConfig,
    checkpoint: Path | None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    description: str | None = None,
):
    """Build the small CNN + projection head and train it on ``images`` with ``cfg``'s objective.

    Returns ``(model, history)``. Initial weights come from ``cfg.seed`` (the same on every process); the
    global random state is restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = small_contrastive_model(images.shape[1], cfg.widths, cfg.projection_dim)
    views = SimCLRViews(
        tuple(images.shape[-2:]),
        ViewConfig(crop_scale=(cfg.crop_scale_min, 1.0), flip_p=0.5 if cfg.flip else 0.0),
    )
    objective = build_objective(cfg, views, tuple(images.shape[1:]))
    train_cfg = TrainConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, optimizer=cfg.optimizer,
        warmup_epochs=cfg.warmup_epochs if cfg.warmup_epochs is not None else max(1, cfg.epochs // 20),
        seed=cfg.seed, device=device or cfg.device,
    )
    trainer = Trainer(
        model, objective, train_cfg, checkpoint=checkpoint, checkpoint_every=max(1, cfg.epochs // 10),
        progress=progress, description=description or f"{cfg.objective} training",
    )
    history = trainer.fit(images, resume=resume)
    return model, history


def _load(cfg: TrainRunConfig) -> ImageArrays:
    """The training part of a named data set (seeded 60/20/20 split, as evaluate uses), or an image folder."""
    from ..data import DATASETS, load_named

    if cfg.data in DATASETS:
        data = load_named(cfg.data)
        split = train_calibration_test_split(data.labels, seed=cfg.seed)
        return data.subset(split.train)
    return load_image_folder(cfg.data, split=cfg.split)


def _init_process_group(device: str) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; False when run alone."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def run_training(cfg: TrainRunConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
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
        model, history = train_contrastive_encoder(
            images, cfg, out / "checkpoint.safetensors", resume=resume, progress=progress, device=device
        )
        result = {
            "config": asdict(cfg),
            "model": {"in_channels": images.shape[1], "widths": list(cfg.widths), "projection_dim": cfg.projection_dim,
                      "image_size": cfg.image_size, "seed": cfg.seed, "data": cfg.data},
            "n_train": int(images.shape[0]),
            "world_size": dist_utils.world_size(),
            "rank": dist_utils.rank(),
            "history": asdict(history),
            "wall_time_s": time.perf_counter() - start,
        }
        if dist_utils.rank() == 0:
            save_state(out / "model.safetensors", model.state_dict(), result["model"], kind=MODEL_KIND)
            write_json(out / "train.json", result)
        return result
    finally:
        if started_group:
            dist.destroy_process_group()


def load_trained_model(path: str | os.PathLike):
    """Rebuild the model written by :func:`run_training` (``model.safetensors``); returns (model, config)."""
    from ..io import load_state

    tensors, config = load_state(path, kind=MODEL_KIND)
    model = small_contrastive_model(config["in_channels"], tuple(config["widths"]), config["projection_dim"])
    model.load_state_dict(tensors)
    model.eval()
    return model, config
