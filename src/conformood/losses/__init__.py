"""Contrastive objectives (``torch.nn.Module``; projections are L2-normalised inside)."""

from .cider import CIDERLoss
from .firm import FIRMLoss, firm_positive_mask, firm_sample_labels
from .infonce import AlignmentLoss, InfoNCELoss, UniformityLoss
from .joint import JointContrastiveCELoss
from .ntxent import NTXentLoss
from .oecl import CSILoss, OECLLoss
from .supcon import SupConLoss

__all__ = [
    "AlignmentLoss",
    "CIDERLoss",
    "CSILoss",
    "FIRMLoss",
    "InfoNCELoss",
    "JointContrastiveCELoss",
    "NTXentLoss",
    "OECLLoss",
    "SupConLoss",
    "UniformityLoss",
    "firm_positive_mask",
    "firm_sample_labels",
]
