"""Learning-rate schedules, stepped once per optimiser step.

Each schedule is a ``torch.optim.lr_scheduler.LRScheduler`` built by :func:`build_schedule` from a name, so
its state (the step count and, for torch's recursive cosine, the running rate) goes into checkpoints and a
resumed run continues with exactly the rates of the uninterrupted one.

* ``warmup_cosine``: linear warm-up to the base rate, then cosine annealing to 0 (FIRM appendix A), in
  closed form (:func:`warmup_cosine_lr`);
* ``cosine``: torch's ``CosineAnnealingLR`` over all steps (the segmentation and set-training recipes);
* ``constant``: the base rate throughout.
"""

from __future__ import annotations

import math

import torch

from ..registry import Registry


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, final_lr: float = 0.0) -> float:
    """Linear warm-up from base_lr/warmup_steps to base_lr, then cosine annealing to ``final_lr``.

    ``step`` counts from 0; the value applies to the optimiser step with that index.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must lie in [0, total_steps], got {warmup_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay = total_steps - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay) if decay > 0 else 1.0
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """:func:`warmup_cosine_lr` per parameter group (each group warms up to its own base rate)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        warmup_cosine_lr(0, self.total_steps, self.warmup_steps, 1.0)  # validates the step counts
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [warmup_cosine_lr(self.last_epoch, self.total_steps, self.warmup_steps, base) for base in self.base_lrs]


class ConstantLR(torch.optim.lr_scheduler.LRScheduler):
    """The base rate of every group at every step."""

    def get_lr(self) -> list[float]:
        return list(self.base_lrs)


SCHEDULES: Registry = Registry("schedule")


@SCHEDULES.register("warmup_cosine", reference="FIRM appendix A", description="linear warm-up, then cosine to 0")
def _warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    return WarmupCosineLR(optimizer, total_steps, warmup_steps)


@SCHEDULES.register("cosine", reference="torch CosineAnnealingLR", description="cosine to 0 over all steps, no warm-up")
def _cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


@SCHEDULES.register("constant", description="the base rate throughout")
def _constant(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    return ConstantLR(optimizer)


def build_schedule(
    name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule registered as ``name`` over ``total_steps`` optimiser steps."""
    return SCHEDULES.get(name)(optimizer, total_steps, warmup_steps)
