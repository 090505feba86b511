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


class DeepProjectionHead(nn.Module):
    """FIRM's deeper projection g_φ (app. A): ``depth`` blocks Linear-BN-ReLU of width ``hidden_dim``, then a
    linear layer to ``out_dim`` — [512 × 8, 128] in the paper."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, depth: int = 8, out_dim: int = 128) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, depth, out_dim) < 1:
            raise ValueError(f"dimensions and depth must be positive, got {in_dim}, {hidden_dim}, {depth}, {out_dim}")
        layers: list[nn.Module] = []
        c = in_dim
        for _ in range(depth):
            layers += [nn.Linear(c, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            c = hidden_dim
        layers.append(nn.Linear(c, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ClassifierHead(nn.Module):
    """A linear classifier on the representation (CLP paper's joint recipe, CSI/OECL shift heads)."""

    def __init__(self, in_dim: int, n_classes: int) -> None:
        super().__init__()
        if in_dim < 1 or n_classes < 2:
            raise ValueError(f"need in_dim >= 1 and at least 2 classes, got {in_dim}, {n_classes}")
        self.linear = nn.Linear(in_dim, n_classes)
        self.n_classes = n_classes

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h)


class ShiftClassifierHead(ClassifierHead):
    """Predicts which shifting transformation (e.g. rotation 0/90/180/270°) was applied: CSI's shift head."""

    def __init__(self, in_dim: int, n_shifts: int = 4) -> None:
        super().__init__(in_dim, n_shifts)
