"""Contrastive objectives (``torch.nn.Module``; projections are L2-normalised inside)."""

from .firm import FIRMLoss, firm_positive_mask
from .ntxent import NTXentLoss

__all__ = ["FIRMLoss", "NTXentLoss", "firm_positive_mask"]
