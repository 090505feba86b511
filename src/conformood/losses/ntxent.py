"""NT-Xent (SimCLR) contrastive loss."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_positive_float
from ._common import check_views, global_sample_offset, view_label_loss


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy (Chen et al. 2020).

    FIRM paper (``firm-in-distribution-representations.md``) eq. (1); CLP paper eq. (1). Averaged over
    the 2n anchors instead of summed::

        L = -1/(2n) sum_i log( exp(z_i . z_{i+} / T) / sum_{a != i} exp(z_i . z_a / T) )

    where z are the L2-normalised projections of the two views and i+ is the other view of the same sample.

    Parameters
    ----------
    temperature : float > 0 (FIRM uses 0.2, SimCLR 0.5).
    gather_distributed : in a torch.distributed run, contrast the local anchors with the views of every
        rank (gradients flow back through :func:`conformood.distributed.gather_with_grad`).

    Call with ``z1, z2`` of shape (n, d): the raw projections of the two views (normalised inside).
    O(n^2 d) time, O(n^2) memory.
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive_float(temperature, "temperature")
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_views(z1, z2)
        n = z1.shape[0]
        ids = torch.arange(n, device=z1.device) + global_sample_offset(n)
        return view_label_loss(z1, z2, ids, self.temperature, self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
