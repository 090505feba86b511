"""Training of the AT and COAT threshold predictors f_D (``coat-adaptive-threshold-segmentation.md``).

f_D is trained on D_2 with L_AT (COAT eq. 8, regression onto the oracle thresholds τ*(X, Y) of §3.1.2, see
:func:`~conformood.conformal.risk.control.oracle_thresholds`) or with L_COAT (Algorithm 1 lines 5–14), by the
one :class:`~conformood.train.Trainer`: AdamW, cosine schedule, random horizontal flips, checkpoints and exact
resume. Everything is seeded by ``seed``; nothing touches the global random state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..._validation import (
    check_alpha,
    check_masks,
    check_positive_int,
    check_probability_maps,
)
from ...losses.coverage import ATLoss, COATLoss
from ...models.segmentation import BackboneThresholdPredictor, ThresholdPredictor
from ...train import TrainConfig, Trainer
from ...train.segmentation import random_hflip
from .sets import oracle_thresholds

METHODS = ("at", "coat")


class ATObjective:
    """L_AT (COAT eq. 8): the predicted τ̂ regressed onto the oracle τ* of each (flipped) image."""

    def __init__(self) -> None:
        self.loss = ATLoss()

    def __call__(self, model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        x, p, targets = batch
        xb, pb = random_hflip(generator, x, p)
        return self.loss(model(xb, pb), targets)


class COATObjective:
    """L_COAT (Algorithm 1 lines 5–14): the soft coverage of σ((p̂ − τ̂)/T) against the target 1 − α."""

    def __init__(self, alpha: float, temperature: float) -> None:
        self.loss = COATLoss(alpha, temperature)

    def __call__(self, model: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        x, p, masks = batch
        xb, pb, yb = random_hflip(generator, x, p, masks)
        return self.loss(pb, yb, model(xb, pb))


PREDICTORS = ("small", "mobilenet_v2")


def threshold_predictor(name: str) -> nn.Module:
    """A new f_D by name: ``"small"`` or ``"mobilenet_v2"`` (see :func:`train_threshold_predictor`)."""
    if name == "small":
        return ThresholdPredictor()
    if name == "mobilenet_v2":
        return BackboneThresholdPredictor()
    raise ValueError(f"predictor must be one of {PREDICTORS}, got {name!r}")


@dataclass
class ThresholdTraining:
    """A trained threshold predictor and its per-epoch training loss."""

    model: nn.Module
    method: str
    alpha: float
    losses: list[float] = field(default_factory=list)

    @torch.no_grad()
    def predict(self, images: np.ndarray, probs: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """τ̂ (n,) float64 for float images (n, 3, h, w) and probability maps (n, h, w)."""
        self.model.eval()
        out = [
            self.model(torch.from_numpy(images[i : i + batch_size]), torch.from_numpy(probs[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out).double().numpy()


def train_threshold_predictor(
    images: np.ndarray,
    probs: np.ndarray,
    masks: np.ndarray,
    alpha: float,
    method: str = "coat",
    epochs: int | None = None,
    batch_size: int = 16,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    temperature: float = 0.05,
    seed: int = 0,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable] = (),
    predictor: str = "small",
) -> ThresholdTraining:
    """Train f_D with L_AT (``method="at"``, COAT eq. 8) or L_COAT (``method="coat"``, Algorithm 1).

    Parameters
    ----------
    images : float32 (n, 3, h, w) in [0, 1]
    probs : float32 (n, h, w), the base model's probability maps
    masks : bool (n, h, w), non-empty ground-truth masks
    epochs : default 30 for AT and 60 for COAT, as in the paper's app. A.3
    temperature : T of the soft mask σ((p̂ − τ̂)/T) (COAT only; paper: 0.05)
    checkpoint, resume : a resumable checkpoint file, and whether to continue it
    callbacks : called by the trainer after every epoch
    predictor : ``"small"`` (:class:`~conformood.models.ThresholdPredictor`, from scratch) or ``"mobilenet_v2"``
        (:class:`~conformood.models.BackboneThresholdPredictor`, ImageNet weights with a fourth input channel,
        the paper's kind of f_D; needs ``make weights``)
    """
    alpha = check_alpha(alpha)
    if method not in METHODS:
        raise ValueError(f"method must be 'at' or 'coat', got {method!r}")
    p = check_probability_maps(probs)
    m = check_masks(masks, p.shape)
    if images.ndim != 4 or images.shape[0] != p.shape[0] or images.shape[-2:] != p.shape[-2:]:
        raise ValueError(f"images must be (n, 3, h, w) matching maps {p.shape}, got {images.shape}")
    epochs = check_positive_int(epochs if epochs is not None else (30 if method == "at" else 60), "epochs")
    batch_size = check_positive_int(batch_size, "batch_size", minimum=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = threshold_predictor(predictor)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    pm = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))
    if method == "at":
        third, objective = torch.from_numpy(oracle_thresholds(p, m, alpha)).float(), ATObjective()
    else:
        third, objective = torch.from_numpy(m), COATObjective(alpha, temperature)
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adamw", weight_decay=weight_decay, schedule="cosine",
        warmup_epochs=0, drop_last=False, min_batch_size=2, shared_generator=True, seed=seed + 1,
    )
    trainer = Trainer(model, objective, config, checkpoint=checkpoint, progress=progress,
                      description=f"{method.upper()} threshold predictor", callbacks=callbacks)
    history = trainer.fit((x, pm, third), resume=resume)
    return ThresholdTraining(model=model, method=method, alpha=alpha, losses=list(history.loss))
