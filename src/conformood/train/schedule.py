"""Learning-rate schedules."""

from __future__ import annotations

import math


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
