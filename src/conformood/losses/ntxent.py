"""NT-Xent (SimCLR) contrastive loss."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_positive_float
from ._common import check_views, pair_index, view_log_probs


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy (Chen et al. 2020).

    FIRM paper (``firm-in-distribution-representations.md``) eq. (1), averaged over the 2n anchors instead of
    summed::

        L = -1/(2n) sum_i log( exp(z_i . z_{i+} / T) / sum_{a != i} exp(z_i . z_a / T) )

    where z are the L2-normalised projections of the two views and i+ is the other view of the same sample.

    Parameters
    ----------
    temperature : float > 0 (FIRM uses 0.2).

    Call with ``z1, z2`` of shape (n, d): the raw projections of the two views (normalised inside).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = check_positive_float(temperature, "temperature")

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_views(z1, z2)
        log_probs = view_log_probs(z1, z2, self.temperature)
        pos = pair_index(z1.shape[0], z1.device)
        return -log_probs.gather(1, pos[:, None]).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
