"""What ``conformood train`` trains: :class:`TrainRunConfig`, and the YAML recipes that describe one (shipped in
``conformood/recipes/`` or a user's file), with their relative paths resolved and former field names read."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .._validation import check_positive_int
from ..models import ENCODERS, HEADS
from .objective_registry import OBJECTIVES

#: recipe fields that were renamed: former name -> current name
FORMER_FIELD_NAMES = {"oe_alpha": "oe_weight", "eval_k": "eval_n_neighbors"}


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


RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
#: recipe fields that may hold a file or folder path (resolved on load, never against the current directory)
PATH_FIELDS = ("oe_pool", "data")


def recipe_names() -> list[str]:
    """The recipes shipped with the package (``conformood recipes`` lists them)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_description(name: str) -> str:
    """The ``description`` line of a shipped recipe."""
    return str(read_recipe(name)[1].get("description", ""))


def read_recipe(name_or_path: str | os.PathLike) -> tuple[Path, dict]:
    """(file, fields) of a recipe (:func:`find_recipe`) as written, before paths are resolved or fields checked."""
    import yaml

    recipe = find_recipe(name_or_path)
    try:
        data = yaml.safe_load(recipe.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{recipe} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{recipe} must hold a mapping of TrainRunConfig fields")
    return recipe, data


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
    recipe, data = read_recipe(path)
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
