"""OECL: contrastive loss plus the L2 norm of outlier-exposure features, and CSI."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_embeddings, check_sample_vector, check_views
from .ntxent import NTXentLoss


class OECLLoss(nn.Module):
    """OECL (OECL paper ``oecl-l2-norm-outlier-exposure.md`` eq. 7; eq. 8 for self-OECL)::

        L = L_contrastive(z1, z2) + λ * mean_j ||f(t(x_oe_j))||_2

    The norm term uses the *unnormalised* projections of the outlier-exposure views ``oe_raw`` (m, d).
    ``base`` is the contrastive loss on the in-distribution views (default :class:`NTXentLoss`, any module
    called as ``base(z1, z2)``). For self-OECL with CSI as the base (eq. 8), add
    ``oecl.current_norm_weight * oecl.norm_penalty(oe_raw)`` to a :class:`CSILoss`.

    The paper calls the weight λ of the norm term α; here ``alpha`` is kept for error levels, and the weight is
    ``norm_weight``. It follows a warm-up schedule: 0 until :meth:`set_epoch` reports ``warmup_epochs``
    finished epochs (the paper warms up 50 epochs with weight 0, appendix H), then ``norm_weight``.
    """

    def __init__(
        self, temperature: float = 0.5, norm_weight: float = 1.0, warmup_epochs: int = 0,
        base: nn.Module | None = None, gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if not norm_weight >= 0:
            raise ValueError(f"norm_weight must be >= 0, got {norm_weight}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.norm_weight = float(norm_weight)
        self.warmup_epochs = int(warmup_epochs)
        self.base = base if base is not None else NTXentLoss(temperature, gather_distributed=gather_distributed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss how many epochs are finished (drives the warm-up of the norm weight)."""
        self.epoch = int(epoch)

    @property
    def current_norm_weight(self) -> float:
        """The weight of the norm term this epoch (0 during the warm-up)."""
        return 0.0 if self.epoch < self.warmup_epochs else self.norm_weight

    def norm_penalty(self, oe_raw: torch.Tensor) -> torch.Tensor:
        """mean_j ||oe_raw_j||_2 of unnormalised outlier-exposure projections (m, d)."""
        check_embeddings(oe_raw, "oe_raw")
        wide = oe_raw.float() if oe_raw.dtype in (torch.float16, torch.bfloat16) else oe_raw  # no float16 overflow
        return wide.norm(dim=1).mean()

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, oe_raw: torch.Tensor) -> torch.Tensor:
        loss = self.base(z1, z2)
        penalty = self.norm_penalty(oe_raw)
        return loss + self.current_norm_weight * penalty


class CSILoss(nn.Module):
    """CSI (Tack et al. 2020), as OECL's self-supervised variant uses it (OECL section IV):

        L = NT-Xent over shifted instances + shift_weight * CE(shift logits, shift labels)

    Every shifted copy of an image (e.g. each rotation) is its own instance: ``z1, z2`` (m, d) are the two
    views of the m shifted instances, ``shift_logits`` (2m, K) the shift classifier's logits for
    [view 1; view 2] and ``shift_labels`` (m,) the index of the shift applied to each instance.
    """

    def __init__(self, temperature: float = 0.5, shift_weight: float = 1.0, gather_distributed: bool = False) -> None:
        super().__init__()
        if shift_weight < 0:
            raise ValueError(f"shift_weight must be >= 0, got {shift_weight}")
        self.contrastive = NTXentLoss(temperature, gather_distributed=gather_distributed)
        self.shift_weight = float(shift_weight)

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, shift_logits: torch.Tensor, shift_labels: torch.Tensor
    ) -> torch.Tensor:
        check_views(z1, z2)
        m = z1.shape[0]
        check_embeddings(shift_logits, "shift_logits")
        if shift_logits.shape[0] != 2 * m:
            raise ValueError(
                f"shift_logits must have shape ({2 * m}, K) for the two views, got {tuple(shift_logits.shape)}"
            )
        check_sample_vector(shift_labels, "shift_labels", m, torch.long)
        k = shift_logits.shape[1]
        if shift_labels.min() < 0 or shift_labels.max() >= k:
            raise ValueError(f"shift_labels must lie in 0..{k - 1}")
        ce = F.cross_entropy(shift_logits, torch.cat([shift_labels, shift_labels]).long())
        return self.contrastive(z1, z2) + self.shift_weight * ce
