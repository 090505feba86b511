"""Segmentation models for risk control: a small U-Net and the threshold predictor f_D.

Paper: ``coat-adaptive-threshold-segmentation.md``. The base model outputs per-pixel probabilities p̂(X)
(§2.2); f_D maps the 4-channel input (RGB image ‖ probability map, COAT eq. 7/9) to one threshold in (0, 1)
through a sigmoid, as in the paper's COAT Algorithm 2. The paper uses ResNet-50 for f_D; on CPU and a few dozen
training images we use a small CNN of the same input/output contract.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import IMAGENET_MEAN, IMAGENET_STD, mobilenet_v2


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with ``len(widths) - 1`` down/up levels, any input size.

    ``forward`` returns logits (n, 1, h, w); :meth:`probabilities` returns σ(logits) as (n, h, w).
    Inputs whose sides are not multiples of 2^levels are padded (reflect) and the output cropped back.
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        if in_channels < 1 or len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"need in_channels >= 1 and at least two positive widths, got {in_channels}, {widths}")
        self.in_channels = in_channels
        self.widths = tuple(int(w) for w in widths)
        self.down = nn.ModuleList()
        c = in_channels
        for w in self.widths:
            self.down.append(_double_conv(c, w))
            c = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(self.widths[:-1]):
            self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.merge.append(_double_conv(2 * w, w))
            c = w
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (n, {self.in_channels}, h, w), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = 2 ** (len(self.widths) - 1)
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :h, :w]

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward(x))[:, 0]


class ThresholdPredictor(nn.Module):
    """f_D of COAT eq. 7/9: (image, probability map) → τ̂ ∈ (0, 1).

    Strided conv-BN-ReLU stages on the 4-channel input, then global average and global max pooling, a
    small MLP and a sigmoid (COAT Algorithm 2). Max pooling lets the network see the peak confidence of the
    probability map, which is what moves a good per-image threshold most.
    """

    def __init__(self, in_channels: int = 4, widths: tuple[int, ...] = (16, 32, 32), hidden: int = 32) -> None:
        super().__init__()
        if in_channels < 1 or not widths or min(widths) < 1 or hidden < 1:
            raise ValueError(f"invalid ThresholdPredictor sizes: {in_channels}, {widths}, {hidden}")
        self.in_channels = in_channels
        self.widths = tuple(int(w) for w in widths)
        self.hidden = int(hidden)
        layers: list[nn.Module] = []
        c = in_channels
        for w in self.widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * c, self.hidden), nn.ReLU(inplace=True), nn.Linear(self.hidden, 1))

    def forward(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """τ̂ for a batch: images (n, 3, h, w) in [0, 1], probability maps (n, h, w); returns (n,)."""
        if probs.ndim != 3 or images.ndim != 4 or images.shape[0] != probs.shape[0]:
            raise ValueError(
                f"expected images (n, c, h, w) and maps (n, h, w), got {tuple(images.shape)}, {tuple(probs.shape)}"
            )
        if images.shape[-2:] != probs.shape[-2:]:
            raise ValueError(f"image size {tuple(images.shape[-2:])} differs from map size {tuple(probs.shape[-2:])}")
        x = torch.cat([images, probs.unsqueeze(1)], dim=1)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels in total, got {x.shape[1]}")
        z = self.features(x)
        pooled = torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1)
        return torch.sigmoid(self.head(pooled)).squeeze(1)


class BackboneThresholdPredictor(nn.Module):
    """f_D of the COAT paper (eq. 7/9) on a pretrained backbone: (image, probability map) → τ̂ ∈ (0, 1).

    As in the paper's appendix code, the backbone's first convolution takes a fourth input channel, the
    probability map, whose filter starts as the mean of the RGB filters; the RGB channels are normalised as the
    backbone was trained, the map by the mean of those statistics. The first ``blocks`` blocks of MobileNetV2
    (default 7: 32 channels at an eighth of the resolution; the images of segmentation data sets are small) are
    followed, as in :class:`~conformood.models.ThresholdPredictor`, by global average and max pooling, a small
    MLP and a sigmoid. Everything is trained (the paper fine-tunes its ResNet-50 whole).
    """

    def __init__(self, weights: str | os.PathLike | None = "imagenet", blocks: int = 7, hidden: int = 32) -> None:
        super().__init__()
        net = mobilenet_v2(weights=weights).module.net
        if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks < len(net.features):
            raise ValueError(f"blocks must be an integer in [1, {len(net.features) - 1}], got {blocks!r}")
        first = net.features[0][0]
        conv = nn.Conv2d(4, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)
        with torch.no_grad():
            conv.weight[:, :3] = first.weight
            conv.weight[:, 3:] = first.weight.mean(dim=1, keepdim=True)
        net.features[0][0] = conv
        self.features = net.features[:blocks]
        with torch.no_grad():
            channels = int(self.features(torch.zeros(1, 4, 32, 32)).shape[1])
        self.head = nn.Sequential(nn.Linear(2 * channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.tensor([*IMAGENET_MEAN, sum(IMAGENET_MEAN) / 3])[:, None, None],
                             persistent=False)
        self.register_buffer("std", torch.tensor([*IMAGENET_STD, sum(IMAGENET_STD) / 3])[:, None, None],
                             persistent=False)

    def forward(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """τ̂ for a batch: images (n, 3, h, w) in [0, 1], probability maps (n, h, w); returns (n,)."""
        if probs.ndim != 3 or images.ndim != 4 or images.shape[0] != probs.shape[0] or images.shape[1] != 3:
            raise ValueError(
                f"expected images (n, 3, h, w) and maps (n, h, w), got {tuple(images.shape)}, {tuple(probs.shape)}")
        if images.shape[-2:] != probs.shape[-2:]:
            raise ValueError(f"image size {tuple(images.shape[-2:])} differs from map size {tuple(probs.shape[-2:])}")
        x = (torch.cat([images, probs.unsqueeze(1)], dim=1) - self.mean) / self.std
        z = self.features(x)
        return torch.sigmoid(self.head(torch.cat([z.mean(dim=(2, 3)), z.amax(dim=(2, 3))], dim=1))).squeeze(1)
