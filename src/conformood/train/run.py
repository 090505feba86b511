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
from ..models import ENCODERS, HEADS, build_contrastive_model
from .objectives import FIRMRotationObjective, NTXentObjective
from .trainer import TrainConfig, Trainer

OBJECTIVES = ("firm", "ntxent", "supcon", "supcon_multiclass", "firm_oe", "oecl_oe", "csi", "self_oecl", "clp", "cider")
OE_OBJECTIVES = ("firm_oe", "oecl_oe")
LABELLED_OBJECTIVES = ("clp", "cider")
CSI_SHIFTS = (0, 90, 180, 270)
SELF_OECL_ID_SHIFTS = (0, 90)
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
    encoder: str = "small_cnn"
    head: str = "mlp"
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
    shift_weight: float = 1.0
    ce_weight: float = 100.0
    label_smoothing: float = 0.1
    stage1_epochs: int = 0
    cider_momentum: float = 0.5
    eval_every: int = 0
    eval_k: int = 1
    eval_max_images: int = 2000

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective in LABELLED_OBJECTIVES and self.normal_class is not None:
            raise ValueError(f"objective {self.objective!r} trains a classifier over several in-distribution "
                             "classes; leave normal_class unset")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0 = no per-epoch evaluation), got {self.eval_every}")
        if self.eval_every and self.normal_class is None:
            raise ValueError("eval_every needs normal_class: the evaluation split's other classes are the outliers")
        check_positive_int(self.eval_k, "eval_k")
        check_positive_int(self.eval_max_images, "eval_max_images", minimum=2)
        if not 0 <= self.stage1_epochs <= self.epochs:
            raise ValueError(f"stage1_epochs must lie in [0, epochs], got {self.stage1_epochs}")
        if self.objective in OE_OBJECTIVES and not self.oe_pool:
            raise ValueError(f"objective {self.objective!r} needs oe_pool: an .npz with an image array 'x'")
        if self.max_images is not None:
            check_positive_int(self.max_images, "max_images", minimum=2)
        check_positive_int(self.image_size, "image_size", minimum=4)
        self.widths = tuple(int(w) for w in self.widths)  # type: ignore[assignment]


def aux_classes_for(cfg: TrainRunConfig, n_classes: int | None = None) -> int | None:
    """Outputs of the model's auxiliary head for ``cfg.objective``: shifts (CSI, self-OECL), classes (CLP)."""
    if cfg.objective == "csi":
        return len(CSI_SHIFTS)
    if cfg.objective == "self_oecl":
        return len(SELF_OECL_ID_SHIFTS)
    if cfg.objective == "clp":
        return n_classes
    return None


def build_objective(cfg: TrainRunConfig, views: SimCLRViews, image_shape: tuple[int, int, int],
                    n_classes: int | None = None):
    """The training objective named by ``cfg.objective`` (outlier-exposure pools conformed to the images)."""
    from ..augment import OutlierExposurePool
    from .objectives import (
        CIDERObjective,
        CLPTwoStageObjective,
        CSIObjective,
        FIRMOutlierExposureObjective,
        OECLObjective,
        SelfOECLObjective,
        SupConRotationObjective,
    )

    gather = dist_utils.is_distributed()
    if cfg.objective == "csi":
        return CSIObjective(views, cfg.temperature, CSI_SHIFTS, cfg.shift_weight, gather_distributed=gather)
    if cfg.objective == "self_oecl":
        return SelfOECLObjective(views, cfg.temperature, alpha=cfg.oe_alpha, warmup_epochs=cfg.oe_warmup_epochs,
                                 id_shifts=SELF_OECL_ID_SHIFTS, oe_shifts=(180, 270), shift_weight=cfg.shift_weight,
                                 gather_distributed=gather)
    if cfg.objective == "clp":
        return CLPTwoStageObjective(views, cfg.temperature, weight=cfg.ce_weight, label_smoothing=cfg.label_smoothing,
                                    stage1_epochs=cfg.stage1_epochs, gather_distributed=gather)
    if cfg.objective == "cider":
        if n_classes is None:
            raise ValueError("CIDER needs the number of classes")
        return CIDERObjective(views, n_classes, cfg.projection_dim, cfg.temperature, momentum=cfg.cider_momentum)
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
    labels: torch.Tensor | np.ndarray | None = None,
    callbacks=(),
):
    """Build ``cfg.encoder`` + ``cfg.head`` (and an auxiliary head where the recipe has one) and train it on
    ``images`` with ``cfg``'s objective.

    ``labels`` (class of each image) are needed by the labelled recipes (``clp``, ``cider``); they are
    mapped to 0..C-1 in sorted order. Returns ``(model, history)``. Initial weights come from ``cfg.seed``
    (the same on every process); the global random state is restored afterwards.
    """
    n_classes = None
    if cfg.objective in LABELLED_OBJECTIVES:
        if labels is None:
            raise ValueError(f"objective {cfg.objective!r} needs the class labels of the training images")
        labels = torch.as_tensor(np.asarray(labels))
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        classes, labels = torch.unique(labels, return_inverse=True)
        n_classes = int(classes.numel())
        if n_classes < 2:
            raise ValueError(f"objective {cfg.objective!r} needs at least 2 classes in the training data, got {n_classes}")
    else:
        labels = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_contrastive_model(images.shape[1], cfg.encoder, cfg.head, cfg.widths, cfg.projection_dim,
                                        aux_classes=aux_classes_for(cfg, n_classes))
    views = SimCLRViews(
        tuple(images.shape[-2:]),
        ViewConfig(crop_scale=(cfg.crop_scale_min, 1.0), flip_p=0.5 if cfg.flip else 0.0),
    )
    objective = build_objective(cfg, views, tuple(images.shape[1:]), n_classes)
    train_cfg = TrainConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, optimizer=cfg.optimizer,
        warmup_epochs=cfg.warmup_epochs if cfg.warmup_epochs is not None else max(1, cfg.epochs // 20),
        seed=cfg.seed, device=device or cfg.device,
    )
    trainer = Trainer(
        model, objective, train_cfg, checkpoint=checkpoint, checkpoint_every=max(1, cfg.epochs // 10),
        progress=progress, description=description or f"{cfg.objective} training", callbacks=callbacks,
    )
    history = trainer.fit(images, resume=resume, labels=labels)
    return model, history


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
    from .callbacks import AUROCCallback, FeatureNormCallback

    test = _load(cfg, "test")
    rng = np.random.default_rng(cfg.seed)
    keep = np.sort(rng.permutation(len(test.labels))[: cfg.eval_max_images])
    test = test.subset(keep)
    is_inlier = test.labels == test.class_index(cfg.normal_class)
    x = resize_images(test.tensor(), (cfg.image_size, cfg.image_size))
    bank = train_images[np.sort(rng.permutation(train_images.shape[0])[: cfg.eval_max_images])]
    norms = FeatureNormCallback(x[is_inlier], x[~is_inlier], every=cfg.eval_every)
    aurocs = AUROCCallback(bank, x, is_inlier, k=cfg.eval_k, every=cfg.eval_every)
    return norms, aurocs


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
        diagnostics = _evaluation_callbacks(cfg, images) if cfg.eval_every else ()
        model, history = train_contrastive_encoder(
            images, cfg, out / "checkpoint.safetensors", resume=resume, progress=progress, device=device,
            labels=data.labels if cfg.objective in LABELLED_OBJECTIVES else None, callbacks=diagnostics,
        )
        aux = model.aux_head.n_classes if model.aux_head is not None else None
        result = {
            "config": asdict(cfg),
            "model": {"in_channels": images.shape[1], "widths": list(cfg.widths), "projection_dim": cfg.projection_dim,
                      "image_size": cfg.image_size, "seed": cfg.seed, "data": cfg.data, "aux_classes": aux,
                      "encoder": cfg.encoder, "head": cfg.head},
            "n_train": int(images.shape[0]),
            "world_size": dist_utils.world_size(),
            "rank": dist_utils.rank(),
            "history": asdict(history),
            "wall_time_s": time.perf_counter() - start,
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
                from .callbacks import plot_training_diagnostics

                plot_training_diagnostics(out / "diagnostics.png", *diagnostics)
        return result
    finally:
        if started_group:
            dist.destroy_process_group()


def load_trained_model(path: str | os.PathLike):
    """Rebuild the model written by :func:`run_training` (``model.safetensors``); returns (model, config)."""
    from ..io import load_state

    tensors, config = load_state(path, kind=MODEL_KIND)
    model = build_contrastive_model(
        config["in_channels"], config.get("encoder", "small_cnn"), config.get("head", "mlp"), tuple(config["widths"]),
        config["projection_dim"], aux_classes=config.get("aux_classes"),
    )
    model.load_state_dict(tensors)
    model.eval()
    return model, config
