"""Heads on top of an encoder."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """The 2-layer MLP projection g_psi of SimCLR: Linear-BN-ReLU-Linear (FIRM paper section 2.1)."""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128) -> None:
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(f"dimensions must be positive, got {in_dim}, {hidden_dim}, {out_dim}")
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)
