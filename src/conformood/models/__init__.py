"""Encoders (small CNN, CIFAR ResNet-18, MLP), heads, and segmentation models."""

from .contrastive import (
    ENCODERS,
    HEADS,
    ContrastiveModel,
    build_contrastive_model,
    small_contrastive_model,
)
from .encoders import SmallCNN
from .features import encode
from .heads import (
    ClassifierHead,
    DeepProjectionHead,
    ProjectionHead,
    ShiftClassifierHead,
)
from .resnet import CifarResNet18, MLPEncoder
from .segmentation import SmallUNet, ThresholdPredictor

__all__ = [
    "ENCODERS",
    "HEADS",
    "build_contrastive_model",
    "encode",
    "CifarResNet18",
    "ClassifierHead",
    "ContrastiveModel",
    "DeepProjectionHead",
    "MLPEncoder",
    "ProjectionHead",
    "ShiftClassifierHead",
    "SmallCNN",
    "SmallUNet",
    "ThresholdPredictor",
    "small_contrastive_model",
]
