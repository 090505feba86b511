"""Training: one trainer, schedules, objectives."""

from .objectives import FIRMRotationObjective, NTXentObjective, Objective
from .schedule import warmup_cosine_lr
from .trainer import TrainConfig, Trainer, TrainHistory

__all__ = [
    "FIRMRotationObjective",
    "NTXentObjective",
    "Objective",
    "TrainConfig",
    "TrainHistory",
    "Trainer",
    "warmup_cosine_lr",
]
