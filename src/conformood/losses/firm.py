"""FIRM: multi-positive contrastive loss for in-distribution samples, single positive for synthetic outliers."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_positive_float
from ._common import (
    check_sample_vector,
    check_views,
    global_sample_offset,
    pair_index,
    view_label_loss,
)


def firm_positive_mask(is_inlier: torch.Tensor) -> torch.Tensor:
    """Boolean (2n, 2n) matrix of FIRM's positive sets P(i) (FIRM paper, definition below eq. 2).

    For an in-distribution anchor, every other in-distribution view in the batch (its own paired view
    included); for a synthetic-outlier anchor, only its paired view i+. (For inspection and tests; the loss
    itself never builds this matrix.)
    """
    n = is_inlier.shape[0]
    flags = torch.cat([is_inlier, is_inlier])
    mask = flags[:, None] & flags[None, :]
    mask.fill_diagonal_(False)
    rows = torch.arange(2 * n, device=is_inlier.device)
    mask[rows, pair_index(n, is_inlier.device)] = True
    return mask


def firm_sample_labels(is_inlier: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Labels that make SupCon equal FIRM: 0 for every inlier, a unique label 1 + index per outlier."""
    ids = torch.arange(is_inlier.shape[0], device=is_inlier.device) + offset + 1
    return torch.where(is_inlier, torch.zeros_like(ids), ids)


class FIRMLoss(nn.Module):
    """FIRM loss (FIRM paper eq. 2), averaged over the 2n anchors instead of summed::

        L = -1/(2n) sum_i 1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / T) / sum_{a != i} exp(z_i . z_a / T) )

    P(i) = all other in-distribution views if i is in-distribution, else {i+}. It equals SupCon with one
    label shared by the inliers and a unique label per outlier; with no inlier it equals NT-Xent.

    Call with ``z1, z2`` (n, d) raw projections of the two views and ``is_inlier`` bool (n,), True for
    in-distribution samples and False for synthetic outliers.
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive_float(temperature, "temperature")
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, is_inlier: torch.Tensor) -> torch.Tensor:
        check_views(z1, z2)
        check_sample_vector(is_inlier, "is_inlier", z1.shape[0], torch.bool)
        n = z1.shape[0]
        labels = firm_sample_labels(is_inlier.to(z1.device), global_sample_offset(n))
        return view_label_loss(z1, z2, labels, self.temperature, self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
