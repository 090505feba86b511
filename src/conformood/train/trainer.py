"""One trainer for every contrastive recipe: SGD + momentum, warm-up + cosine, atomic checkpoints, resume."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._validation import check_positive_float, check_positive_int
from ..io import load_state, save_state
from .objectives import Objective
from .schedule import warmup_cosine_lr

CHECKPOINT_KIND = "checkpoint"


@dataclass
class TrainConfig:
    """Optimisation settings (FIRM appendix A: SGD, momentum 0.9, linear warm-up then cosine, L2 decay)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 5
    seed: int = 0
    device: str = "cpu"
    drop_last: bool = True

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size", minimum=2)
        check_positive_float(self.lr, "lr")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs], got {self.warmup_epochs}")


@dataclass
class TrainHistory:
    """Mean loss and learning rate of each finished epoch."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on in-distribution images with an :class:`Objective`.

    Randomness (shuffling, synthetic outliers, views) comes from one ``torch.Generator`` seeded with
    ``config.seed``; the global generators are never reseeded. With ``checkpoint`` set, the model, the
    optimiser, the generator and the history are saved atomically after every ``checkpoint_every``
    epochs (and when interrupted), and ``fit(resume=True)`` continues from the last one.
    Each callback is called as ``callback(trainer)`` after every epoch (after the checkpoint is written).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        config: TrainConfig | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        progress: bool = True,
        description: str = "training",
        callbacks: Sequence[Callable[[Trainer], None]] = (),
    ) -> None:
        self.model = model
        self.objective = objective
        self.config = config or TrainConfig()
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
        self.progress = progress
        self.description = description
        self.callbacks = list(callbacks)
        self.history = TrainHistory()
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=self.config.lr,
            momentum=self.config.momentum,
            weight_decay=self.config.weight_decay,
        )

    def _steps_per_epoch(self, n: int) -> int:
        bs = self.config.batch_size
        return max(1, n // bs) if self.config.drop_last else max(1, math.ceil(n / bs))

    def fit(self, images: torch.Tensor, resume: bool = False) -> TrainHistory:
        """Train on float images (n, c, h, w) in [0, 1]; returns the per-epoch history."""
        from tqdm.auto import tqdm

        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not torch.is_floating_point(images):
            raise ValueError("images must be a float tensor (n, channels, height, width) in [0, 1]")
        if images.shape[0] < 2:
            raise ValueError(f"need at least 2 training images, got {images.shape[0]}")
        if not torch.isfinite(images).all():
            raise ValueError("training images contain NaN or infinite values")
        if resume and self.checkpoint is not None and self.checkpoint.is_file():
            self.load_checkpoint(self.checkpoint)
        cfg = self.config
        device = torch.device(cfg.device)
        self.model.to(device)
        n = images.shape[0]
        bs = min(cfg.batch_size, n)
        steps = self._steps_per_epoch(n)
        total, warmup = cfg.epochs * steps, cfg.warmup_epochs * steps
        bar = tqdm(
            total=cfg.epochs, initial=self.epoch, desc=self.description, unit="epoch",
            disable=not self.progress, leave=False,
        )
        try:
            while self.epoch < cfg.epochs:
                self.model.train()
                order = torch.randperm(n, generator=self.generator)
                losses = []
                for s in range(steps):
                    lr = warmup_cosine_lr(self.epoch * steps + s, total, warmup, cfg.lr)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    idx = order[s * bs : (s + 1) * bs]
                    if idx.numel() < 2:
                        continue
                    loss = self.objective(self.model, images[idx].to(device), self.generator)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss became {loss.item()} at epoch {self.epoch + 1}")
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    losses.append(float(loss.detach()))
                self.epoch += 1
                self.history.loss.append(float(np.mean(losses)))
                self.history.lr.append(lr)
                bar.update(1)
                bar.set_postfix(loss=f"{self.history.loss[-1]:.3f}")
                if self.checkpoint is not None and (
                    self.epoch % self.checkpoint_every == 0 or self.epoch == cfg.epochs
                ):
                    self.save_checkpoint(self.checkpoint)
                for callback in self.callbacks:
                    callback(self)
        except KeyboardInterrupt:
            if self.checkpoint is not None:
                self.save_checkpoint(self.checkpoint)
            raise
        finally:
            bar.close()
        self.model.eval()
        return self.history

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Atomically save model, optimiser state, generator state and history (safetensors + JSON)."""
        tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        for pid, state in opt["state"].items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{pid}.{key}"] = value
        tensors["generator"] = self.generator.get_state()
        config = {
            "epoch": self.epoch,
            "train_config": asdict(self.config),
            "param_groups": opt["param_groups"],
            "history": asdict(self.history),
        }
        save_state(path, tensors, config, kind=CHECKPOINT_KIND)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore what :meth:`save_checkpoint` wrote; the model's architecture must match."""
        tensors, meta = load_state(path, kind=CHECKPOINT_KIND)
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.generator.set_state(tensors["generator"])
        self.epoch = int(meta["epoch"])
        self.history = TrainHistory(**meta["history"])
