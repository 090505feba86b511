"""Supervised contrastive loss (SupCon), binary or multiclass."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_positive_float
from ._common import check_sample_vector, check_views, view_label_loss


class SupConLoss(nn.Module):
    """SupCon "L_out" of Khosla et al. (2020): mean log-probability over all positives of each anchor.

    FIRM paper section 2.1 and appendix D (baselines SupCon and SupCon*)::

        L = -1/(2n) sum_i 1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / T) / sum_{a != i} exp(z_i . z_a / T) )

    with P(i) = every other view whose sample has the same label as i's sample. Binary SupCon labels
    inliers and synthetic outliers 0/1; SupCon* labels outliers by their transformation (e.g. rotation).

    Call with ``z1, z2`` (n, d) raw projections of the two views and integer ``labels`` (n,).

    **Convention (differs from the authors' code).** The SupContrast reference multiplies the loss by
    T / base_T (base_T = 0.07); this loss is the plain mean above, so it equals the reference divided by
    T / base_T (the optimum is the same; the gradient scale differs by that constant).
    """

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive_float(temperature, "temperature")
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_views(z1, z2)
        check_sample_vector(labels, "labels", z1.shape[0], torch.long)
        return view_label_loss(z1, z2, labels.long(), self.temperature, self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
