"""Encoders f_theta: images to representation vectors."""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A small convolutional encoder for 8x8 to 32x32 images.

    Three stages of two 3x3 conv-BN-ReLU blocks; stages 2 and 3 start with stride 2; global average
    pooling gives a ``feature_dim``-dimensional representation (``widths[-1]``).
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        if in_channels < 1 or len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"need in_channels >= 1 and three positive widths, got {in_channels}, {widths}")
        w1, w2, w3 = widths
        self.in_channels = in_channels
        self.widths = tuple(widths)
        self.features = nn.Sequential(
            _block(in_channels, w1, 1),
            _block(w1, w1, 1),
            _block(w1, w2, 2),
            _block(w2, w2, 1),
            _block(w2, w3, 2),
            _block(w3, w3, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (n, {self.in_channels}, h, w), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 4:
            raise ValueError(f"images must be at least 4x4, got {tuple(x.shape[-2:])}")
        return self.features(x)
