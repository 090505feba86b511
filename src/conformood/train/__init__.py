"""Training: the one trainer, its schedules and optimisers, the objectives and the callbacks."""

from .callbacks import AUROCCallback, BestEpoch, FeatureNormCallback
from .classifier import EnsembleMember, MLPClassifier, fit_clp_ensemble
from .objectives import (
    CIDERObjective,
    CLPTwoStageObjective,
    CSIObjective,
    FIRMOutlierExposureObjective,
    FIRMRotationObjective,
    NTXentObjective,
    Objective,
    OECLObjective,
    SelfOECLObjective,
    SupConRotationObjective,
)
from .optimizers import LARS, OPTIMIZERS, build_optimizer
from .schedule import SCHEDULES, WarmupCosineLR, build_schedule, warmup_cosine_lr
from .trainer import TrainConfig, Trainer, TrainHistory

__all__ = [
    "AUROCCallback",
    "BestEpoch",
    "CIDERObjective",
    "CLPTwoStageObjective",
    "CSIObjective",
    "EnsembleMember",
    "MLPClassifier",
    "fit_clp_ensemble",
    "FIRMOutlierExposureObjective",
    "FIRMRotationObjective",
    "FeatureNormCallback",
    "LARS",
    "NTXentObjective",
    "OECLObjective",
    "OPTIMIZERS",
    "Objective",
    "SCHEDULES",
    "SelfOECLObjective",
    "SupConRotationObjective",
    "TrainConfig",
    "TrainHistory",
    "Trainer",
    "WarmupCosineLR",
    "build_optimizer",
    "build_schedule",
    "warmup_cosine_lr",
]
