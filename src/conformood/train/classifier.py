"""Classifier members of the CLP ensemble (``contrastive-training-ood-clp.md`` section 4), trained by the one
:class:`~conformood.train.Trainer`.

The CLP paper trains an ensemble of classifiers that differ only in their seed on D_in ∪ D_out with the
extended label set; the members' averaged probabilities c_k(x) (CLP eq. 3) give the CLP (eq. 4). Here each member
is an MLP on features, trained with cross-entropy (Adam, constant rate, L2 decay), so that it has the trainer's
checkpoints, resume and progress bars. :func:`conformood.metrics.ensemble_predict` averages the members.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from .._validation import check_features, check_positive_int
from ..models import encode
from .trainer import TrainConfig, Trainer


class MLPClassifier(nn.Module):
    """Linear → ReLU blocks of widths ``hidden``, then a linear layer to ``n_classes`` logits."""

    def __init__(self, in_features: int, n_classes: int, hidden: tuple[int, ...] = (256,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CrossEntropyObjective:
    """Cross-entropy of the model's logits on a (features, class index) batch."""

    expects_images = False

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                 generator: torch.Generator) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)


class EnsembleMember:
    """A trained member: ``classes_`` (the label of each output) and ``predict_proba(features)`` (n, K)."""

    def __init__(self, model: MLPClassifier, classes: np.ndarray, history: list[float]) -> None:
        self.model, self.classes_, self.history = model, classes, history

    def predict_proba(self, features: ArrayLike) -> np.ndarray:
        x = torch.from_numpy(check_features(features, "features").astype(np.float32))
        return torch.softmax(encode(self.model, x).double(), dim=1).numpy()


def fit_clp_ensemble(
    features: ArrayLike,
    labels: ArrayLike,
    n_members: int = 5,
    seed: int = 0,
    hidden: tuple[int, ...] = (256,),
    epochs: int = 200,
    batch_size: int = 200,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    progress: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable] = (),
) -> list[EnsembleMember]:
    """Train ``n_members`` MLP classifiers differing only in their seed (``seed + j``: initial weights and
    batch order) on ``features`` (n, d) with integer ``labels`` (n,) — D_in ∪ D_out with the extended label set,
    as the CLP paper does with its ResNet ensemble (section 4). Returns the fitted members.

    With ``checkpoint_dir``, member j is checkpointed to ``member-j.safetensors`` there, and ``resume=True``
    continues each member exactly (finished members are restored, not retrained)."""
    x = torch.from_numpy(check_features(features, "features").astype(np.float32))
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    classes, index = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"need at least 2 classes, got {classes.size}")
    check_positive_int(n_members, "n_members")
    targets = torch.from_numpy(index.astype(np.int64))
    members = []
    for j in range(n_members):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + j)
            model = MLPClassifier(x.shape[1], int(classes.size), tuple(hidden))
        config = TrainConfig(epochs=epochs, batch_size=min(batch_size, x.shape[0]), lr=lr, optimizer="adam",
                             weight_decay=weight_decay, schedule="constant", warmup_epochs=0, drop_last=False,
                             min_batch_size=1, seed=seed + j)
        checkpoint = Path(checkpoint_dir) / f"member-{j}.safetensors" if checkpoint_dir is not None else None
        history = Trainer(model, CrossEntropyObjective(), config, checkpoint=checkpoint, progress=progress,
                          description=f"CLP member {j + 1}/{n_members}", callbacks=callbacks,
                          checkpoint_every=max(1, epochs // 10)).fit((x, targets), resume=resume)
        members.append(EnsembleMember(model, classes, list(history.loss)))
    return members
