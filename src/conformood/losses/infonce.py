"""InfoNCE with explicit negatives, and the alignment / uniformity diagnostics of Wang & Isola (2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._validation import check_positive_float
from ._common import check_embeddings, check_views, unit_rows


class InfoNCELoss(nn.Module):
    """InfoNCE with explicit negatives (CCS paper ``contrastive-conformal-sets.md`` eq. 21)::

        L = -1/n sum_i log( e^{sim(z_i, z_i+)/T} / (e^{sim(z_i, z_i+)/T} + sum_neg e^{sim(z_i, z_neg)/T}) )

    with sim the cosine similarity. Call with ``anchor`` (n, d), ``positive`` (n, d) and ``negatives``
    either (n, k, d) (own negatives per anchor) or (k, d) (shared by every anchor).
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = check_positive_float(temperature, "temperature")

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        check_embeddings(anchor, "anchor")
        check_embeddings(positive, "positive")
        if anchor.shape != positive.shape:
            raise ValueError(
                f"anchor and positive must have one shape, got {tuple(anchor.shape)}, {tuple(positive.shape)}"
            )
        if not isinstance(negatives, torch.Tensor) or negatives.ndim not in (2, 3):
            raise ValueError("negatives must be a tensor of shape (n, k, d) or (k, d)")
        if not torch.is_floating_point(negatives):
            raise ValueError(f"negatives must be a floating-point tensor, got {negatives.dtype}")
        if negatives.shape[-1] != anchor.shape[1] or (negatives.ndim == 3 and negatives.shape[0] != anchor.shape[0]):
            raise ValueError(
                f"negatives must have shape ({anchor.shape[0]}, k, {anchor.shape[1]}) or (k, {anchor.shape[1]}), "
                f"got {tuple(negatives.shape)}"
            )
        if negatives.shape[-2] < 1:
            raise ValueError("at least one negative is needed")
        if not torch.isfinite(negatives).all():
            raise ValueError("negatives contains NaN or infinite values")
        a = unit_rows(anchor)
        pos = (a * unit_rows(positive).to(a.dtype)).sum(-1, keepdim=True)
        neg_n = unit_rows(negatives).to(a.dtype)
        neg = torch.einsum("nd,nkd->nk", a, neg_n) if negatives.ndim == 3 else a @ neg_n.T
        logits = torch.cat([pos, neg], dim=1) / self.temperature
        return -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()


class AlignmentLoss(nn.Module):
    """Alignment E ||z(x) - z(y)||_2^p over positive pairs (OECL paper appendix B eq. 12, where the exponent is
    called alpha; here ``exponent``, default 2).

    Projections are L2-normalised inside. Call with the two views ``z1, z2`` (n, d).
    """

    def __init__(self, exponent: float = 2.0) -> None:
        super().__init__()
        self.exponent = check_positive_float(exponent, "exponent")

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_views(z1, z2)
        diff = unit_rows(z1, dim=1) - unit_rows(z2, dim=1)
        return diff.norm(dim=1).pow(self.exponent).mean()


class UniformityLoss(nn.Module):
    """Uniformity log E exp(-t ||z(x) - z(y)||^2) over distinct pairs (OECL appendix B eq. 13, t = 1).

    Wang & Isola use t = 2; the OECL paper writes the exponent without a factor (t = 1), the default here.
    Call with embeddings ``z`` (n, d), n >= 2 (normalised inside).
    """

    def __init__(self, t: float = 1.0) -> None:
        super().__init__()
        self.t = check_positive_float(t, "t")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_embeddings(z, "z", min_rows=2)
        sq = torch.pdist(unit_rows(z, dim=1), p=2).pow(2)
        return torch.logsumexp(-self.t * sq, dim=0) - math.log(sq.numel())
