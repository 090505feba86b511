"""The one training loop of conformood: any model, any objective ``(model, batch, generator) -> loss``.

Contrastive encoders, the segmentation U-Net, the AT/COAT threshold predictor, the learned conformal sets and
the CLP ensemble members all train here, and all of them get checkpoints, exact resume, progress bars,
callbacks and (where the objective allows it) data-parallel training under ``torchrun`` from it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed as dist_utils
from .._validation import check_positive_float, check_positive_int
from ..io import remove_stale_temporaries
from .checkpoint import (
    augmentation_seed,
    load_checkpoint,
    save_checkpoint,
)
from .objectives import Objective
from .optimizers import OPTIMIZERS, build_optimizer
from .schedule import SCHEDULES, build_schedule


@dataclass
class TrainConfig:
    """Optimisation settings (defaults: FIRM appendix A — SGD, momentum 0.9, warm-up then cosine, L2 decay).

    ``batch_size`` is the global batch: under ``torchrun`` each of the W processes takes batch_size / W.
    ``drop_last`` drops the ragged last batch of an epoch; batches smaller than ``min_batch_size`` are skipped
    (BatchNorm and the contrastive losses need two samples). ``schedule`` names a registered schedule
    (``warmup_cosine``, ``cosine``, ``constant``). ``clip_grad_norm`` clips the global gradient norm of the
    stepped optimiser's parameters. With ``shared_generator`` one random stream drives both the shuffling and
    the objective's augmentations; otherwise each has its own. ``distributed=False`` trains every process
    alone even inside a process group (for objectives that cannot be split over processes).
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
    schedule: str = "warmup_cosine"
    clip_grad_norm: float | None = None
    min_batch_size: int = 2
    shared_generator: bool = False
    distributed: bool = True

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.min_batch_size, "min_batch_size")
        check_positive_int(self.batch_size, "batch_size", minimum=self.min_batch_size)
        check_positive_float(self.lr, "lr")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS.names()}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES.names()}, got {self.schedule!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs], got {self.warmup_epochs}")
        if self.clip_grad_norm is not None:
            check_positive_float(self.clip_grad_norm, "clip_grad_norm")


@dataclass
class TrainHistory:
    """Per finished epoch: mean loss (weighted by batch size), last learning rate, and the mean of any
    statistics the objective reported."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)


Batch = torch.Tensor | tuple[torch.Tensor, ...]


class Trainer:
    """Trains ``model`` with an :class:`Objective` over the rows of one tensor or of several aligned tensors.

    Randomness comes from ``torch.Generator``s seeded from ``config.seed``: one shuffles the data (the same on
    every process) and one drives synthetic outliers and views (one stream per process), unless
    ``config.shared_generator``. The global generators are never reseeded.

    ``optimizers`` (optional) builds the optimisers from the model; by default one, named by
    ``config.optimizer``, over all parameters. An objective with several optimisers says which one each epoch
    steps through its ``active_optimizer`` attribute (read after ``set_epoch``).

    With ``checkpoint`` set, the model, optimisers, schedules, generators, objective and callback state and the
    history are saved atomically every ``checkpoint_every`` epochs, at the end and when interrupted (Ctrl-C),
    and ``fit(resume=True)`` continues from the last one, reproducing the uninterrupted run. The checkpoint
    records the training config and ``recipe`` (what the caller trains: data, objective, model); resuming with
    a different one is refused with the list of the fields that differ.

    Callbacks are called as ``callback(trainer)`` after every epoch (before the checkpoint is written), and
    ``callback.on_train_end(trainer)`` when training finishes, where defined. A callback with ``state_dict`` /
    ``load_state_dict`` is checkpointed.

    Under ``torchrun`` (an initialised process group, and ``config.distributed``) the model is wrapped in
    DistributedDataParallel, each process trains on its slice of every global batch, and only rank 0 writes
    checkpoints. Give the objective losses built with ``gather_distributed=True`` so anchors see the negatives
    of every rank.
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
        optimizers: Callable[[nn.Module], Sequence[torch.optim.Optimizer]] | None = None,
        recipe: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.objective = objective
        self.config = config or TrainConfig()
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        if self.checkpoint is not None and self.checkpoint.exists() and not self.checkpoint.is_file():
            raise ValueError(f"checkpoint {self.checkpoint} is a directory, expected a file path")
        self.checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
        self.progress = progress
        self.description = description
        self.callbacks = list(callbacks)
        self.recipe = dict(recipe) if recipe is not None else None
        self.history = TrainHistory()
        self.epoch = 0
        cfg = self.config
        self.rank = dist_utils.rank()
        self.world_size = dist_utils.world_size() if cfg.distributed else 1
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.aug_generator = (self.generator if cfg.shared_generator
                              else torch.Generator().manual_seed(augmentation_seed(cfg.seed, self.rank)))
        if optimizers is None:
            self.optimizers = [build_optimizer(cfg.optimizer, model, cfg.lr, cfg.momentum, cfg.weight_decay)]
        else:
            self.optimizers = list(optimizers(model))
            if not self.optimizers:
                raise ValueError("optimizers(model) returned no optimiser")
        self.schedules: list | None = None
        self._schedule_steps: int | None = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The first (usually the only) optimiser."""
        return self.optimizers[0]

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

    def _build_schedules(self, total_steps: int, warmup_steps: int) -> None:
        if self.schedules is not None and self._schedule_steps == total_steps:
            return
        self.schedules = [build_schedule(self.config.schedule, opt, total_steps, warmup_steps)
                          for opt in self.optimizers]
        self._schedule_steps = total_steps

    def _check_data(self, data, labels) -> tuple[tuple[torch.Tensor, ...], bool, torch.Tensor | None]:
        single = isinstance(data, torch.Tensor)
        tensors = (data,) if single else tuple(data) if isinstance(data, (tuple, list)) else None
        if not tensors or not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in tensors):
            raise ValueError("training data must be a tensor or a tuple of tensors with one row per sample")
        if single and getattr(self.objective, "expects_images", True) and (
            data.ndim != 4 or not torch.is_floating_point(data)
        ):
            raise ValueError("images must be a float tensor (n, channels, height, width) in [0, 1]")
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError(f"training tensors disagree in length: {[t.shape[0] for t in tensors]}")
        if n < 2:
            raise ValueError(f"need at least 2 training samples, got {n}")
        for t in tensors:
            if torch.is_floating_point(t) and not torch.isfinite(t).all():
                raise ValueError("training data contain NaN or infinite values")
        needs_labels = bool(getattr(self.objective, "needs_labels", False))
        if needs_labels and labels is None:
            raise ValueError(f"{type(self.objective).__name__} needs class labels: pass labels= to fit")
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (n,) or labels.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"labels must be an integer tensor of shape ({n},), "
                                 f"got {labels.dtype} {tuple(labels.shape)}")
            if labels.min() < 0:
                raise ValueError("labels must be non-negative class indices")
            labels = labels.long() if needs_labels else None
        return tensors, single, labels

    def fit(self, data: Batch | list[torch.Tensor], resume: bool = False,
            labels: torch.Tensor | None = None) -> TrainHistory:
        """Train on ``data`` — float images (n, c, h, w) in [0, 1], or a tuple of tensors with n rows each (the
        objective receives the same tuple, batch by batch) — and return the per-epoch history.

        ``labels`` (n,) integer class indices are required by objectives with ``needs_labels`` (CLP, CIDER)
        and passed to them batch by batch as ``labels=``.
        """
        from tqdm.auto import tqdm

        tensors, single, labels = self._check_data(data, labels)
        cfg = self.config
        if cfg.batch_size % self.world_size != 0:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {self.world_size} processes")
        n = tensors[0].shape[0]
        bs = min(cfg.batch_size, n - n % self.world_size)
        local = bs // self.world_size
        if local < 2 and self.world_size > 1:
            raise ValueError(f"each of the {self.world_size} processes needs at least 2 samples per batch")
        steps = self._steps_per_epoch(n, bs)
        self._build_schedules(cfg.epochs * steps, cfg.warmup_epochs * steps)
        if self.checkpoint is not None and self.rank == 0:
            remove_stale_temporaries(self.checkpoint)
        if resume and self.checkpoint is not None and self.checkpoint.is_file():
            self.load_checkpoint(self.checkpoint)
        device = torch.device(cfg.device)
        self.model.to(device)
        train_model = self._training_model()
        bar = tqdm(  # counts batches, so that a long epoch shows progress; the description names the epoch
            total=cfg.epochs * steps, initial=self.epoch * steps, desc=self._bar_text(), unit="batch",
            disable=not self.progress or self.rank != 0, leave=False,
        )
        between_epochs = True  # the model, optimisers and generators are at an epoch boundary
        try:
            while self.epoch < cfg.epochs:
                between_epochs = False
                self._run_epoch(train_model, tensors, single, labels, n, bs, local, steps, device, bar)
                between_epochs = True
                bar.set_description(self._bar_text())
                bar.set_postfix(loss=f"{self.history.loss[-1]:.3f}")
                for callback in self.callbacks:
                    callback(self)
                if self.checkpoint is not None and (
                    self.epoch % self.checkpoint_every == 0 or self.epoch == cfg.epochs
                ):
                    self.save_checkpoint(self.checkpoint)
        except KeyboardInterrupt:
            # Saved only at an epoch boundary: a state from the middle of an epoch would not resume exactly, so
            # an interrupt inside an epoch leaves the last checkpoint as it is.
            if self.checkpoint is not None and between_epochs:
                self.save_checkpoint(self.checkpoint)
            raise
        finally:
            bar.close()
        for callback in self.callbacks:
            if hasattr(callback, "on_train_end"):
                callback.on_train_end(self)
        self.model.eval()
        return self.history

    def _bar_text(self) -> str:
        return f"{self.description} (epoch {min(self.epoch + 1, self.config.epochs)}/{self.config.epochs})"

    def _run_epoch(self, train_model, tensors, single, labels, n, bs, local, steps, device, bar=None) -> None:
        cfg = self.config
        train_model.train()
        if hasattr(self.objective, "set_epoch"):
            self.objective.set_epoch(self.epoch)
        active = int(getattr(self.objective, "active_optimizer", 0))
        optimizer, schedule = self.optimizers[active], self.schedules[active]
        order = torch.randperm(n, generator=self.generator)
        losses, sizes, stats_sum, stats_count = [], [], {}, 0
        lr = optimizer.param_groups[0]["lr"]
        for s in range(steps):
            if bar is not None:
                bar.update(1)
            idx = order[s * bs : (s + 1) * bs]
            if idx.numel() < bs and self.world_size > 1 or idx.numel() < cfg.min_batch_size:
                continue  # a ragged last batch cannot be split evenly over processes
            idx = idx[self.rank * local : (self.rank + 1) * local] if self.world_size > 1 else idx
            parts = tuple(t[idx].to(device) for t in tensors)
            batch = parts[0] if single else parts
            extra = {"labels": labels[idx].to(device)} if labels is not None else {}
            out = self.objective(train_model, batch, self.aug_generator, **extra)
            loss, stats = out if isinstance(out, tuple) else (out, None)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {self.epoch + 1}")
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad_norm is not None:
                params = [p for group in optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            schedule.step()
            losses.append(float(loss.detach()))
            sizes.append(int(idx.numel()))
            if stats:
                stats_count += 1
                for key, value in stats.items():
                    stats_sum[key] = stats_sum.get(key, 0.0) + float(value)
        self.epoch += 1
        mean = float(np.average(losses, weights=sizes)) if losses else float("nan")
        self.history.loss.append(self._mean_over_processes(mean))
        self.history.lr.append(lr)
        if stats_count:
            self.history.metrics.append({k: v / stats_count for k, v in stats_sum.items()})

    def _mean_over_processes(self, value: float) -> float:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.collective_device())
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def collective_device(self) -> torch.device:
        import torch.distributed as dist

        return torch.device(self.config.device) if dist.get_backend() == "nccl" else torch.device("cpu")

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Atomically save model, optimisers, schedules, generators, objective and callback state and the
        history (safetensors + JSON); rank 0 writes (:func:`conformood.train.checkpoint.save_checkpoint`)."""
        save_checkpoint(self, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore what :meth:`save_checkpoint` wrote; the model's architecture must match."""
        load_checkpoint(self, path)
