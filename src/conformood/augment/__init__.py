"""Augmentations: SimCLR views and shifting transformations (synthetic outliers)."""

from .shifts import ROTATION_ANGLES, rotate, rotation_outliers
from .views import SimCLRViews, ViewConfig

__all__ = ["ROTATION_ANGLES", "SimCLRViews", "ViewConfig", "rotate", "rotation_outliers"]
