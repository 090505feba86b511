"""Augmentations: SimCLR views, shifting transformations and synthetic outliers, outlier-exposure pools."""

from .outliers import (
    CUTPERM_SHIFTS,
    OutlierExposurePool,
    cut_perm,
    cut_perm_outliers,
    cutpaste,
    nsa_outliers,
    poisson_blend,
)
from .shifts import ROTATION_ANGLES, rotate, rotation_outliers
from .views import SimCLRViews, ViewConfig, random_hflip

__all__ = [
    "CUTPERM_SHIFTS",
    "OutlierExposurePool",
    "cut_perm",
    "cut_perm_outliers",
    "cutpaste",
    "nsa_outliers",
    "poisson_blend",
    "ROTATION_ANGLES", "SimCLRViews", "ViewConfig", "random_hflip", "rotate", "rotation_outliers"]
