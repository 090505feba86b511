"""Fine-tuning a pretrained encoder with the papers' objectives: the encoder's factory options (weights, input
size, frozen blocks, frozen BatchNorm statistics), its own learning rate, and the options a saved model may
carry. Used by :func:`conformood.train.recipes.train_contrastive_encoder` and ``load_trained_model``."""

from __future__ import annotations

from typing import Any

from torch import nn

from .._validation import check_positive_int
from ..models import ENCODERS


def encoder_options_for(cfg: Any, for_loading: bool = False) -> dict:
    """The factory options of a pretrained encoder (none for the from-scratch ones); ``for_loading`` leaves the
    weights out (a saved model holds its own)."""
    if not ENCODERS.info(cfg.encoder).extra.get("pretrained", False):
        return {}
    weights = None if for_loading or cfg.weights == "none" else cfg.weights
    return {"weights": weights, "input_size": cfg.backbone_input_size, "freeze_blocks": cfg.freeze_blocks,
            "freeze_bn": cfg.freeze_bn}


def optimizer_groups(model: nn.Module, cfg: Any) -> Any:
    """The trainable parameters, with the encoder in its own group at ``backbone_lr`` when that is set."""
    from .optimizers import build_optimizer

    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    rest = [p for name, p in model.named_parameters() if not name.startswith("encoder.") and p.requires_grad]
    groups = [{"params": encoder, "lr": cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr},
              {"params": rest, "lr": cfg.lr}]
    return [build_optimizer(cfg.optimizer, [g for g in groups if g["params"]], cfg.lr, cfg.momentum,
                            cfg.weight_decay)]


def stored_encoder_options(options: Any) -> dict:
    """A saved model's encoder options, checked: only the known keys, no weights file (the model holds its own)."""
    if options is None:
        return {}
    if not isinstance(options, dict) or set(options) - {"weights", "input_size", "freeze_blocks", "freeze_bn"}:
        raise ValueError(f"encoder_options must be a mapping of input_size, freeze_blocks, freeze_bn; got {options!r}")
    if options.get("weights") is not None:
        raise ValueError("a saved model must not name a weights file to load (it holds its weights)")
    check_positive_int(options.get("input_size", 128), "input_size", minimum=8)
    check_positive_int(options.get("freeze_blocks", 0), "freeze_blocks", minimum=0)
    return dict(options)
