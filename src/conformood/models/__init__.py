"""Encoders and heads."""

from .contrastive import ContrastiveModel, small_contrastive_model
from .encoders import SmallCNN
from .heads import ProjectionHead

__all__ = ["ContrastiveModel", "ProjectionHead", "SmallCNN", "small_contrastive_model"]
