"""Contrastive loss plus cross-entropy with label smoothing (CLP paper section 3)."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_embeddings, check_sample_vector
from .ntxent import NTXentLoss


class JointContrastiveCELoss(nn.Module):
    """L = L_con + lambda * CE_ls (``contrastive-training-ood-clp.md`` section 3, eq. 1 for L_con).

    L_con is NT-Xent on the two views' projections; CE_ls is cross-entropy with label smoothing on a
    classifier head's logits (the paper uses lambda = 100 and smoothing 0.01 for CIFAR-10, 0.1 for
    CIFAR-100). Call with ``z1, z2`` (n, d), ``logits`` (n, C) or (2n, C) (one or both views) and ``labels``
    (n,). The paper's first stage is ``weight = 0`` (contrastive only).
    """

    def __init__(
        self, temperature: float = 0.5, weight: float = 100.0, label_smoothing: float = 0.1,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) or not (
                0.0 <= label_smoothing < 1.0):
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.contrastive = NTXentLoss(temperature, gather_distributed=gather_distributed)
        self.weight = float(weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n = z1.shape[0]
        con = self.contrastive(z1, z2)
        check_embeddings(logits, "logits")
        if logits.shape[0] not in (n, 2 * n):
            raise ValueError(f"logits must have {n} or {2 * n} rows, got {tuple(logits.shape)}")
        check_sample_vector(labels, "labels", n, torch.long)
        if labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1}")
        targets = labels.long() if logits.shape[0] == n else torch.cat([labels, labels]).long()
        ce = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return con + self.weight * ce
