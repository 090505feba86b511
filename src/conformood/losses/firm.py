"""FIRM: multi-positive contrastive loss for in-distribution samples, single positive for synthetic outliers."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_positive_float
from ._common import check_views, pair_index, view_log_probs


def firm_positive_mask(is_inlier: torch.Tensor) -> torch.Tensor:
    """Boolean (2n, 2n) matrix of FIRM's positive sets P(i) (FIRM paper, definition below eq. 2).

    For an in-distribution anchor, every other in-distribution view in the batch (its own paired view
    included); for a synthetic-outlier anchor, only its paired view i+.
    """
    n = is_inlier.shape[0]
    flags = torch.cat([is_inlier, is_inlier])
    mask = flags[:, None] & flags[None, :]
    mask.fill_diagonal_(False)
    rows = torch.arange(2 * n, device=is_inlier.device)
    mask[rows, pair_index(n, is_inlier.device)] = True
    return mask


class FIRMLoss(nn.Module):
    """FIRM loss (FIRM paper eq. 2), averaged over the 2n anchors instead of summed::

        L = -1/(2n) sum_i 1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / T) / sum_{a != i} exp(z_i . z_a / T) )

    P(i) = all other in-distribution views if i is in-distribution, else {i+}. With no inlier in the
    batch it equals :class:`NTXentLoss`; with only inliers it equals SupCon with a single label.

    Call with ``z1, z2`` (n, d) raw projections of the two views and ``is_inlier`` bool (n,), True for
    in-distribution samples and False for synthetic outliers.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = check_positive_float(temperature, "temperature")

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, is_inlier: torch.Tensor) -> torch.Tensor:
        check_views(z1, z2)
        if not isinstance(is_inlier, torch.Tensor) or is_inlier.dtype != torch.bool:
            raise ValueError("is_inlier must be a bool tensor of shape (n,)")
        if is_inlier.shape != (z1.shape[0],):
            raise ValueError(f"is_inlier must have shape ({z1.shape[0]},), got {tuple(is_inlier.shape)}")
        log_probs = view_log_probs(z1, z2, self.temperature)
        mask = firm_positive_mask(is_inlier.to(z1.device))
        per_anchor = (log_probs * mask).sum(dim=1) / mask.sum(dim=1)
        return -per_anchor.mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
