"""One trainer for every contrastive recipe: SGD + momentum, warm-up + cosine, atomic checkpoints, resume,
and data-parallel training under ``torchrun``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_positive_float, check_positive_int
from ..io import load_state, save_state
from .objectives import Objective
from .optimizers import OPTIMIZERS, build_optimizer
from .schedule import warmup_cosine_lr

CHECKPOINT_KIND = "checkpoint"


@dataclass
class TrainConfig:
    """Optimisation settings (FIRM appendix A: SGD, momentum 0.9, linear warm-up then cosine, L2 decay).

    ``batch_size`` is the global batch: under ``torchrun`` each of the W processes takes batch_size / W.
    """

    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 5
    seed: int = 0
    device: str = "cpu"
    drop_last: bool = True
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size", minimum=2)
        check_positive_float(self.lr, "lr")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs], got {self.warmup_epochs}")


@dataclass
class TrainHistory:
    """Mean loss and learning rate of each finished epoch."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)


def _augmentation_seed(seed: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, rank, 1]).generate_state(1)[0])


class Trainer:
    """Trains ``model`` on in-distribution images with an :class:`Objective`.

    Randomness comes from two ``torch.Generator``s seeded from ``config.seed``: one shuffles the data (the
    same on every process) and one drives synthetic outliers and views (one stream per process). The
    global generators are never reseeded. With ``checkpoint`` set, the model, the optimiser, the generators
    and the history are saved atomically every ``checkpoint_every`` epochs, at the end and when
    interrupted (Ctrl-C), and ``fit(resume=True)`` continues from the last one, reproducing the
    uninterrupted run. Each callback is called as ``callback(trainer)`` after every epoch.

    Under ``torchrun`` (an initialised process group) the model is wrapped in DistributedDataParallel,
    each process trains on its slice of every global batch, and only rank 0 writes checkpoints. Give the
    objective losses built with ``gather_distributed=True`` so anchors see the negatives of every rank.
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
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.aug_generator = torch.Generator().manual_seed(_augmentation_seed(self.config.seed, self.rank))
        self.optimizer = build_optimizer(
            self.config.optimizer, model, self.config.lr, self.config.momentum, self.config.weight_decay
        )

    def _steps_per_epoch(self, n: int, bs: int) -> int:
        return max(1, n // bs) if self.config.drop_last else max(1, math.ceil(n / bs))

    def _training_model(self) -> nn.Module:
        if self.world_size == 1:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [torch.device(self.config.device).index or 0] if self.config.device.startswith("cuda") else None
        # an auxiliary head takes no gradient in some steps (the first stage of the CLP recipe)
        unused = getattr(self.model, "aux_head", None) is not None
        return DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=unused)

    def fit(self, images: torch.Tensor, resume: bool = False, labels: torch.Tensor | None = None) -> TrainHistory:
        """Train on float images (n, c, h, w) in [0, 1]; returns the per-epoch history.

        ``labels`` (n,) integer class indices are required by objectives with ``needs_labels`` (CLP, CIDER)
        and passed to them batch by batch.
        """
        from tqdm.auto import tqdm

        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not torch.is_floating_point(images):
            raise ValueError("images must be a float tensor (n, channels, height, width) in [0, 1]")
        if images.shape[0] < 2:
            raise ValueError(f"need at least 2 training images, got {images.shape[0]}")
        if not torch.isfinite(images).all():
            raise ValueError("training images contain NaN or infinite values")
        needs_labels = bool(getattr(self.objective, "needs_labels", False))
        if needs_labels and labels is None:
            raise ValueError(f"{type(self.objective).__name__} needs class labels: pass labels= to fit")
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (images.shape[0],) or labels.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"labels must be an integer tensor of shape ({images.shape[0]},), "
                                 f"got {labels.dtype} {tuple(labels.shape)}")
            if labels.min() < 0:
                raise ValueError("labels must be non-negative class indices")
            labels = labels.long()
        cfg = self.config
        if cfg.batch_size % self.world_size != 0:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.world_size} processes")
        if resume and self.checkpoint is not None and self.checkpoint.is_file():
            self.load_checkpoint(self.checkpoint)
        device = torch.device(cfg.device)
        self.model.to(device)
        train_model = self._training_model()
        n = images.shape[0]
        bs = min(cfg.batch_size, n - n % self.world_size)
        local = bs // self.world_size
        if local < 2:
            raise ValueError(f"each of the {self.world_size} processes needs at least 2 images per batch")
        steps = self._steps_per_epoch(n, bs)
        total, warmup = cfg.epochs * steps, cfg.warmup_epochs * steps
        bar = tqdm(
            total=cfg.epochs, initial=self.epoch, desc=self.description, unit="epoch",
            disable=not self.progress or self.rank != 0, leave=False,
        )
        lr = cfg.lr
        try:
            while self.epoch < cfg.epochs:
                train_model.train()
                if hasattr(self.objective, "set_epoch"):
                    self.objective.set_epoch(self.epoch)
                order = torch.randperm(n, generator=self.generator)
                losses = []
                for s in range(steps):
                    lr = warmup_cosine_lr(self.epoch * steps + s, total, warmup, cfg.lr)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    idx = order[s * bs : (s + 1) * bs]
                    if idx.numel() < bs and self.world_size > 1 or idx.numel() < 2:
                        continue  # a ragged last batch cannot be split evenly over processes
                    idx = idx[self.rank * local : (self.rank + 1) * local] if self.world_size > 1 else idx
                    extra = {"labels": labels[idx].to(device)} if needs_labels else {}
                    loss = self.objective(train_model, images[idx].to(device), self.aug_generator, **extra)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"loss became {loss.item()} at epoch {self.epoch + 1}")
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    losses.append(float(loss.detach()))
                self.epoch += 1
                self.history.loss.append(self._mean_over_processes(float(np.mean(losses))))
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

    def _mean_over_processes(self, value: float) -> float:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def _collective_device(self) -> torch.device:
        import torch.distributed as dist

        return torch.device(self.config.device) if dist.get_backend() == "nccl" else torch.device("cpu")

    def _all_aug_states(self) -> list[torch.Tensor]:
        state = self.aug_generator.get_state()
        if self.world_size == 1:
            return [state]
        gathered = dist_utils.gather_no_grad(state[None].to(self._collective_device()))
        return [s.cpu() for s in gathered]

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Atomically save model, optimiser, generators and history (safetensors + JSON); rank 0 writes."""
        aug_states = self._all_aug_states()  # a collective: every process takes part
        if self.rank == 0:
            tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            opt = self.optimizer.state_dict()
            for pid, state in opt["state"].items():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        tensors[f"optim.{pid}.{key}"] = value
            if hasattr(self.objective, "state_dict"):
                for k, v in self.objective.state_dict().items():
                    tensors[f"objective.{k}"] = v
            tensors["generator"] = self.generator.get_state()
            for r, s in enumerate(aug_states):
                tensors[f"aug_generator.{r}"] = s
            config = {
                "epoch": self.epoch,
                "world_size": self.world_size,
                "train_config": asdict(self.config),
                "param_groups": opt["param_groups"],
                "history": asdict(self.history),
            }
            save_state(path, tensors, config, kind=CHECKPOINT_KIND)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

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
        objective_state = {k[len("objective."):]: v for k, v in tensors.items() if k.startswith("objective.")}
        if hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(objective_state)
        self.generator.set_state(tensors["generator"])
        self.epoch = int(meta["epoch"])
        aug_key = f"aug_generator.{self.rank}"
        if meta.get("world_size", 1) == self.world_size and aug_key in tensors:
            self.aug_generator.set_state(tensors[aug_key])
        else:  # resumed on another number of processes: fresh, still seeded, augmentation streams
            self.aug_generator.manual_seed(_augmentation_seed(self.config.seed * 1_000 + self.epoch, self.rank))
        self.history = TrainHistory(**meta["history"])
