"""Running a recipe: :func:`train_contrastive_encoder` builds the model, views and objective of a
:class:`~conformood.train.run_config.TrainRunConfig` and trains them with the one :class:`~conformood.train.Trainer`;
:func:`load_trained_model` rebuilds the model it wrote. The configuration and its YAML files are
:mod:`conformood.train.run_config`; the objectives, :mod:`conformood.train.objective_registry`.

The experiment around it (loading data, process groups, writing results) is
:func:`conformood.experiments.train.run_training`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .._validation import check_positive_int
from ..augment import SimCLRViews, ViewConfig
from ..models import ContrastiveModel, build_contrastive_model
from .finetune import encoder_options_for, optimizer_groups, stored_encoder_options
from .objective_registry import OBJECTIVES, aux_classes_for, build_objective
from .run_config import TrainRunConfig
from .trainer import TrainConfig, Trainer, TrainHistory

MODEL_KIND = "ContrastiveModel"


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
