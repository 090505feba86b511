"""Training recipes: :class:`TrainRunConfig` (what ``conformood train`` and the YAML recipes shipped in ``recipes/``
describe), the registry of contrastive objectives, and :func:`train_contrastive_encoder`, which builds the model,
views and objective of a recipe and trains them with the one :class:`~conformood.train.Trainer`.

The experiment around it (loading data, process groups, writing results) is
:func:`conformood.experiments.train.run_training`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed as dist_utils
from .._validation import check_positive_int
from ..augment import SimCLRViews, ViewConfig
from ..models import ENCODERS, HEADS, ContrastiveModel, build_contrastive_model
from ..registry import Registry
from .finetune import encoder_options_for, optimizer_groups, stored_encoder_options
from .objectives import (
    CIDERObjective,
    CLPTwoStageObjective,
    CSIObjective,
    FIRMOutlierExposureObjective,
    FIRMRotationObjective,
    NTXentObjective,
    OECLObjective,
    SelfOECLObjective,
    SupConRotationObjective,
)
from .trainer import TrainConfig, Trainer, TrainHistory

CSI_SHIFTS = (0, 90, 180, 270)
SELF_OECL_ID_SHIFTS = (0, 90)
MODEL_KIND = "ContrastiveModel"
#: recipe fields that were renamed: former name -> current name
FORMER_FIELD_NAMES = {"oe_alpha": "oe_weight", "eval_k": "eval_n_neighbors"}


OBJECTIVES: Registry = Registry("objective")


def _objective(name: str, reference: str, description: str, needs_labels: bool = False,
               needs_oe_pool: bool = False, aux_classes: int | str | None = None):
    return OBJECTIVES.register(name, reference=reference, description=description, needs_labels=needs_labels,
                               needs_oe_pool=needs_oe_pool, aux_classes=aux_classes)


@_objective("firm", "FIRM eq. 2, section 2.1", "FIRM with rotations as synthetic outliers")
def _firm(cfg, views, pool, n_classes, gather):
    return FIRMRotationObjective(views, cfg.temperature, gather_distributed=gather)


@_objective("ntxent", "FIRM eq. 1 (SimCLR)", "NT-Xent on two views")
def _ntxent(cfg, views, pool, n_classes, gather):
    return NTXentObjective(views, cfg.temperature, gather_distributed=gather)


@_objective("supcon", "FIRM Table 4", "SupCon, inliers vs rotated outliers (binary)")
def _supcon(cfg, views, pool, n_classes, gather):
    return SupConRotationObjective(views, cfg.temperature, binary=True, gather_distributed=gather)


@_objective("supcon_multiclass", "FIRM Table 4 (SupCon*)", "SupCon, every rotation its own class")
def _supcon_multiclass(cfg, views, pool, n_classes, gather):
    return SupConRotationObjective(views, cfg.temperature, binary=False, gather_distributed=gather)


@_objective("firm_oe", "FIRM section 2.1, OE variant", "FIRM with outlier-exposure images", needs_oe_pool=True)
def _firm_oe(cfg, views, pool, n_classes, gather):
    return FIRMOutlierExposureObjective(views, pool, cfg.temperature, gather_distributed=gather)


@_objective("oecl_oe", "OECL eq. 7", "NT-Xent + oe_weight * ||f(OE image)||", needs_oe_pool=True)
def _oecl_oe(cfg, views, pool, n_classes, gather):
    return OECLObjective(views, pool, cfg.temperature, norm_weight=cfg.oe_weight, warmup_epochs=cfg.oe_warmup_epochs,
                         gather_distributed=gather)


@_objective("csi", "Tack et al. 2020; OECL section IV", "rotations as shifted instances + shift classifier",
            aux_classes=len(CSI_SHIFTS))
def _csi(cfg, views, pool, n_classes, gather):
    return CSIObjective(views, cfg.temperature, CSI_SHIFTS, cfg.shift_weight, gather_distributed=gather)


@_objective("self_oecl", "OECL eq. 8", "CSI on {0, 90} + weight * ||f|| of {180, 270}-rotated outliers",
            aux_classes=len(SELF_OECL_ID_SHIFTS))
def _self_oecl(cfg, views, pool, n_classes, gather):
    return SelfOECLObjective(views, cfg.temperature, norm_weight=cfg.oe_weight, warmup_epochs=cfg.oe_warmup_epochs,
                             id_shifts=SELF_OECL_ID_SHIFTS, oe_shifts=(180, 270), shift_weight=cfg.shift_weight,
                             gather_distributed=gather)


@_objective("clp", "CLP paper section 3", "NT-Xent, then NT-Xent + CE with label smoothing (labels)",
            needs_labels=True, aux_classes="classes")
def _clp(cfg, views, pool, n_classes, gather):
    return CLPTwoStageObjective(views, cfg.temperature, weight=cfg.ce_weight, label_smoothing=cfg.label_smoothing,
                                stage1_epochs=cfg.stage1_epochs, gather_distributed=gather)


@_objective("cider", "Ming et al. 2023", "compactness + dispersion around class prototypes (labels)",
            needs_labels=True)
def _cider(cfg, views, pool, n_classes, gather):
    if n_classes is None:
        raise ValueError("CIDER needs the number of classes")
    return CIDERObjective(views, n_classes, cfg.projection_dim, cfg.temperature, momentum=cfg.cider_momentum,
                          gather_distributed=gather)


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
    weights: str = "imagenet"  # pretrained encoders: 'imagenet', 'none' or a weights file
    backbone_input_size: int = 128  # pretrained encoders: the views are resized to this before the backbone
    freeze_blocks: int = 0  # pretrained encoders: blocks at the input kept fixed
    freeze_bn: bool = False  # pretrained encoders: BatchNorm statistics kept at their pretrained values
    backbone_lr: float | None = None  # pretrained encoders: the encoder's own learning rate (default: lr)
    seed: int = 0
    device: str = "cpu"
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int | None = None
    oe_pool: str | None = None
    oe_weight: float = 1.0
    oe_warmup_epochs: int = 0
    max_images: int | None = None
    shift_weight: float = 1.0
    ce_weight: float = 100.0
    label_smoothing: float = 0.1
    stage1_epochs: int = 0
    cider_momentum: float = 0.5
    eval_every: int = 0
    eval_n_neighbors: int = 1
    eval_max_images: int = 2000

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES.names()}, got {self.objective!r}")
        if OBJECTIVES.info(self.objective).needs_labels and self.normal_class is not None:
            raise ValueError(f"objective {self.objective!r} trains a classifier over several in-distribution "
                             "classes; leave normal_class unset")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {list(ENCODERS)}, got {self.encoder!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        pretrained = ENCODERS.info(self.encoder).extra.get("pretrained", False)
        tuned = {"freeze_blocks": self.freeze_blocks != 0, "freeze_bn": self.freeze_bn,
                 "backbone_lr": self.backbone_lr is not None}
        if not pretrained and any(tuned.values()):
            raise ValueError(f"{', '.join(k for k, v in tuned.items() if v)} apply to pretrained encoders (e.g. "
                             f"mobilenet_v2), not to {self.encoder!r}")
        check_positive_int(self.freeze_blocks, "freeze_blocks", minimum=0)
        check_positive_int(self.backbone_input_size, "backbone_input_size", minimum=8)
        if self.backbone_lr is not None and not (isinstance(self.backbone_lr, (int, float)) and self.backbone_lr > 0):
            raise ValueError(f"backbone_lr must be a positive number, got {self.backbone_lr!r}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0 = no per-epoch evaluation), got {self.eval_every}")
        if self.eval_every and self.normal_class is None:
            raise ValueError("eval_every needs normal_class: the evaluation split's other classes are the outliers")
        check_positive_int(self.eval_n_neighbors, "eval_n_neighbors")
        check_positive_int(self.eval_max_images, "eval_max_images", minimum=2)
        if not 0 <= self.stage1_epochs <= self.epochs:
            raise ValueError(f"stage1_epochs must lie in [0, epochs], got {self.stage1_epochs}")
        if OBJECTIVES.info(self.objective).needs_oe_pool and not self.oe_pool:
            raise ValueError(f"objective {self.objective!r} needs oe_pool: an .npz with an image array 'x'")
        if self.max_images is not None:
            check_positive_int(self.max_images, "max_images", minimum=2)
        check_positive_int(self.image_size, "image_size", minimum=4)
        self.widths = tuple(int(w) for w in self.widths)  # type: ignore[assignment]


def aux_classes_for(cfg: TrainRunConfig, n_classes: int | None = None) -> int | None:
    """Outputs of the model's auxiliary head for ``cfg.objective``: shifts (CSI, self-OECL), classes (CLP)."""
    aux = OBJECTIVES.info(cfg.objective).aux_classes
    return n_classes if aux == "classes" else aux


def build_objective(cfg: TrainRunConfig, views: SimCLRViews, image_shape: tuple[int, int, int],
                    n_classes: int | None = None) -> Any:
    """The training objective registered as ``cfg.objective`` (outlier-exposure pools conformed to the images)."""
    pool = None
    if OBJECTIVES.info(cfg.objective).needs_oe_pool:
        from ..augment import OutlierExposurePool

        pool = OutlierExposurePool.from_npz(cfg.oe_pool, image_shape)
    return OBJECTIVES.get(cfg.objective)(cfg, views, pool, n_classes, dist_utils.is_distributed())


RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
#: recipe fields that may hold a file or folder path (resolved on load, never against the current directory)
PATH_FIELDS = ("oe_pool", "data")


def recipe_names() -> list[str]:
    """The recipes shipped with the package (``conformood recipes`` lists them)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_description(name: str) -> str:
    """The ``description`` line of a shipped recipe."""
    import yaml

    data = yaml.safe_load(find_recipe(name).read_text()) or {}
    return str(data.get("description", "")) if isinstance(data, dict) else ""


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe (``firm_rotations``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.exists():
        raise ValueError(f"recipe {path} is a directory, expected a YAML file")
    shipped = RECIPES_DIR / f"{path.stem if path.suffix in ('.yaml', '.yml') else path.name}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"no recipe file {path}, and no shipped recipe of that name (known: "
                            f"{', '.join(recipe_names())}; `conformood recipes` lists them)")


def _resolve_path(value: str, recipe: Path) -> str:
    """A path written in a recipe: absolute as is; relative ones resolve against the recipe's own folder when
    the file is there (a user's recipe next to its data), else against the data root (``$CONFORMOOD_DATA``,
    default ``../shared/data``), never against the current directory alone."""
    from ..data import default_data_dir

    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    beside = recipe.resolve().parent / path
    if beside.exists() and recipe.resolve().parent != RECIPES_DIR:
        return str(beside)
    return str((default_data_dir() / path).resolve())


def load_train_config(path: str | os.PathLike, **overrides: Any) -> TrainRunConfig:
    """A :class:`TrainRunConfig` from a YAML recipe (a file, or a shipped recipe's name); ``overrides`` (the
    options given explicitly on the command line) win over the file. Relative paths of the file resolve as
    :func:`_resolve_path` says; paths given as overrides are the user's own and stay as given."""
    import yaml

    recipe = find_recipe(path)
    try:
        data = yaml.safe_load(recipe.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{recipe} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{recipe} must hold a mapping of TrainRunConfig fields")
    data.pop("description", None)
    for former, current in FORMER_FIELD_NAMES.items():
        if former in data:
            import warnings

            if current in data:
                raise ValueError(f"{recipe}: give {current} only ({former} is its former name)")
            warnings.warn(f"{recipe}: {former} is deprecated; use {current}", FutureWarning, stacklevel=2)
            data[current] = data.pop(former)
    from ..data import DATASETS

    for key in PATH_FIELDS:
        value = data.get(key)
        if isinstance(value, str) and not (key == "data" and value in DATASETS):
            data[key] = _resolve_path(value, recipe)
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainRunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{recipe}: unknown field(s) {unknown}; known: {sorted(known)}")
    if "widths" in data:
        if not isinstance(data["widths"], (list, tuple)):
            raise ValueError(f"{recipe}: widths must be a list of integers, got {data['widths']!r}")
        data["widths"] = tuple(data["widths"])
    try:
        return TrainRunConfig(**data)
    except TypeError as exc:
        raise ValueError(f"{recipe}: {exc}") from None


def train_contrastive_encoder(
    images: torch.Tensor,
    cfg: TrainRunConfig,
    checkpoint: Path | None,
    resume: bool = False,
    progress: bool = True,
    device: str | None = None,
    description: str | None = None,
    labels: torch.Tensor | np.ndarray | None = None,
    callbacks: Sequence[Callable] = (),
) -> tuple[ContrastiveModel, TrainHistory]:
    """Build ``cfg.encoder`` + ``cfg.head`` (and an auxiliary head where the recipe has one) and train it on
    ``images`` with ``cfg``'s objective.

    ``labels`` (class of each image) are needed by the labelled recipes (``clp``, ``cider``); they are
    mapped to 0..C-1 in sorted order. Returns ``(model, history)``. Initial weights come from ``cfg.seed``
    (the same on every process); the global random state is restored afterwards.
    """
    n_classes = None
    if OBJECTIVES.info(cfg.objective).needs_labels:
        if labels is None:
            raise ValueError(f"objective {cfg.objective!r} needs the class labels of the training images")
        labels = torch.as_tensor(np.asarray(labels))
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        classes, labels = torch.unique(labels, return_inverse=True)
        n_classes = int(classes.numel())
        if n_classes < 2:
            raise ValueError(
                f"objective {cfg.objective!r} needs at least 2 classes in the training data, got {n_classes}"
            )
    else:
        labels = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_contrastive_model(images.shape[1], cfg.encoder, cfg.head, cfg.widths, cfg.projection_dim,
                                        aux_classes=aux_classes_for(cfg, n_classes),
                                        encoder_options=encoder_options_for(cfg))
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
        optimizers=(lambda m: optimizer_groups(m, cfg)) if encoder_options_for(cfg) else None,
        recipe={k: v for k, v in asdict(cfg).items() if k not in ("device", "eval_every", "eval_n_neighbors",
                                                                   "eval_max_images")},
    )
    history = trainer.fit(images, resume=resume, labels=labels)
    return model, history


def load_trained_model(path: str | os.PathLike) -> tuple[ContrastiveModel, dict]:
    """Rebuild the model written by :func:`run_training` (``model.safetensors``); returns (model, config)."""
    from ..io import load_module_state, load_state

    tensors, config = load_state(path, kind=MODEL_KIND)

    def build() -> ContrastiveModel:
        widths = config["widths"]
        if not isinstance(widths, list):
            raise TypeError(f"widths must be a list of integers, got {widths!r}")
        for name, value in [("in_channels", config["in_channels"]), ("projection_dim", config["projection_dim"])] + [
            ("widths", w) for w in widths
        ] + ([("aux_classes", config["aux_classes"])] if config.get("aux_classes") is not None else []):
            check_positive_int(value, name)
        return build_contrastive_model(
            config["in_channels"], config.get("encoder", "small_cnn"), config.get("head", "mlp"), tuple(widths),
            config["projection_dim"], aux_classes=config.get("aux_classes"),
            encoder_options=stored_encoder_options(config.get("encoder_options")),
        )

    model = load_module_state(build, tensors, str(path))
    model.eval()
    return model, config
