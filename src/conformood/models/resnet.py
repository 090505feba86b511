"""CIFAR-style ResNet-18 (He et al. 2016) and an MLP encoder for feature vectors.

The CIFAR variant used by FIRM, OECL and CSI: a 3×3 stride-1 stem without max-pooling, four stages of two
BasicBlocks (64, 128, 256, 512 channels; stages 2–4 start with stride 2), global average pooling; the
representation f_θ(x) has ``feature_dim`` = 512 dimensions (FIRM app. A).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32×32 inputs: 3×3 stem, no max-pool; ``forward`` returns (n, 512) features."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, int, int, int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        if in_channels < 1 or len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"need in_channels >= 1 and four positive widths, got {in_channels}, {widths}")
        self.in_channels = in_channels
        self.widths = tuple(int(w) for w in widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers = []
        c = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(c, w, stride), BasicBlock(w, w, 1)]
            c = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (n, {self.in_channels}, h, w), got {tuple(x.shape)}")
        return self.pool(self.layers(self.stem(x))).flatten(1)


class MLPEncoder(nn.Module):
    """An encoder for feature vectors: Linear-BN-ReLU blocks; ``feature_dim`` = the last hidden width."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        if in_dim < 1 or not hidden or min(hidden) < 1:
            raise ValueError(f"need in_dim >= 1 and positive hidden widths, got {in_dim}, {hidden}")
        layers: list[nn.Module] = []
        c = in_dim
        for h in hidden:
            layers += [nn.Linear(c, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            c = h
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.feature_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected features (n, {self.in_dim}), got {tuple(x.shape)}")
        return self.net(x)
