"""Training of the segmentation base model (``coat-adaptive-threshold-segmentation.md``, Algorithm 1 line 3).

The U-Net is trained by the one :class:`~conformood.train.Trainer` with :class:`SegmentationBCEObjective`, so
it gets checkpoints, exact resume and progress bars. Everything is seeded by the ``seed`` argument; nothing
touches global RNG state. The AT/COAT threshold predictors, which need the conformal oracle thresholds, are
trained in :mod:`conformood.conformal.risk.threshold_training`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._validation import check_positive_float, check_positive_int
from ..data.segmentation import SegmentationData
from ..models.segmentation import SmallUNet
from .trainer import TrainConfig, Trainer


def random_hflip(generator: torch.Generator, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Flip each sample horizontally with probability 1/2 (one draw per sample, shared by all ``tensors``)."""
    flip = torch.rand(tensors[0].shape[0], generator=generator) < 0.5
    return tuple(torch.where(flip.view(-1, *([1] * (t.ndim - 1))).to(t.device), t.flip(-1), t) for t in tensors)


class SegmentationBCEObjective:
    """Pixel-wise binary cross-entropy with positives weighted by ``pos_weight``, on randomly h-flipped
    (image, mask) batches."""

    def __init__(self, pos_weight: torch.Tensor) -> None:
        self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                 generator: torch.Generator) -> torch.Tensor:
        xb, yb = random_hflip(generator, *batch)
        return self.loss(model(xb), yb)


def train_segmentation_model(
    data: SegmentationData,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 2e-3,
    widths: tuple[int, ...] = (16, 32, 64),
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable] = (),
) -> tuple[SmallUNet, list[float]]:
    """A :class:`SmallUNet` trained with pixel-wise binary cross-entropy (Adam, cosine schedule, h-flips).

    Returns the model (eval mode) and the mean training loss per epoch. With ``checkpoint``, training is
    resumable (``resume=True`` continues it exactly); ``callbacks`` go to the trainer.
    """
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_float(lr, "lr")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallUNet(3, widths)
    x = torch.from_numpy(data.float_images())
    y = torch.from_numpy(data.masks.astype(np.float32)).unsqueeze(1)
    # Class balance: positives are rare (cars cover ~5% of CamVid), so weight them by the inverse ratio.
    pos = float(y.mean())
    pos_weight = torch.tensor((1.0 - pos) / max(pos, 1e-6)) ** 0.5
    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adam", weight_decay=0.0, schedule="cosine",
        warmup_epochs=0, drop_last=False, min_batch_size=1, shared_generator=True, seed=seed + 1,
    )
    trainer = Trainer(model, SegmentationBCEObjective(pos_weight), config, checkpoint=checkpoint,
                      progress=progress, description="segmentation model", callbacks=callbacks)
    history = trainer.fit((x, y), resume=resume)
    return model, list(history.loss)


@torch.no_grad()
def predict_probabilities(model: SmallUNet, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probability maps (n, h, w) float32 for float images (n, 3, h, w) in [0, 1]."""
    model.eval()
    out = [model.probabilities(torch.from_numpy(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


