"""Contrastive objectives (``torch.nn.Module``; projections are L2-normalised inside)."""

from .cider import CIDERLoss
from .coverage import ATLoss, COATLoss, soft_tpr
from .firm import FIRMLoss, firm_positive_mask, firm_sample_labels
from .infonce import AlignmentLoss, InfoNCELoss, UniformityLoss
from .joint import JointContrastiveCELoss
from .ntxent import NTXentLoss
from .oecl import CSILoss, OECLLoss
from .supcon import SupConLoss

__all__ = [
    "ATLoss",
    "COATLoss",
    "soft_tpr",
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
