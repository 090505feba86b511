"""Encoders (small CNN, CIFAR ResNet-18, MLP), heads, segmentation models, and pretrained backbones."""

from .backbones import (
    BACKBONES,
    Backbone,
    backbone_from_module,
    get_backbone,
    packaged_weights,
    read_weights,
    weights_installed,
)
from .contrastive import (
    ENCODERS,
    HEADS,
    ContrastiveModel,
    build_contrastive_model,
    small_contrastive_model,
)
from .encoders import SmallCNN
from .extract import extract_features
from .features import encode
from .heads import (
    ClassifierHead,
    DeepProjectionHead,
    ProjectionHead,
    ShiftClassifierHead,
)
from .mobilenet import MobileNetV2
from .resnet import CifarResNet18, MLPEncoder
from .segmentation import BackboneThresholdPredictor, SmallUNet, ThresholdPredictor

__all__ = [
    "BACKBONES",
    "Backbone",
    "MobileNetV2",
    "backbone_from_module",
    "extract_features",
    "get_backbone",
    "packaged_weights",
    "read_weights",
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
    "BackboneThresholdPredictor",
    "weights_installed",
    "small_contrastive_model",
]
