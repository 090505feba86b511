"""MobileNetV2 (Sandler et al. 2018), written for conformood with torchvision's state-dict keys.

The module tree mirrors ``torchvision.models.mobilenet_v2`` (``features.0`` … ``features.18``, each inverted
residual's ``conv`` sequence, ``classifier.1``), so torchvision checkpoints such as ImageNet's
``mobilenet_v2-b0353104.pth`` load unchanged, key for key and shape for shape. torchvision itself is never
imported.
"""

from __future__ import annotations

import torch
from torch import nn

#: (expansion t, output channels c, repeats n, first stride s) of the paper's Table 2
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going below 90 % of ``value`` (the reference rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → ReLU6; keys ``0.weight`` and ``1.*`` as torchvision's
    ``Conv2dNormActivation``."""

    def __init__(self, inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Expand (1×1, unless t = 1) → depthwise 3×3 → linear 1×1 projection, with a residual when shapes allow."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand))
        self.use_residual = stride == 1 and inp == out
        layers: list[nn.Module] = [ConvBNReLU6(inp, hidden, kernel=1)] if expand != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with torchvision's keys. :meth:`forward` returns class logits; :meth:`features_of` the pooled
    1,280-d penultimate features that conformood's detectors use."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        first = make_divisible(32 * width_mult)
        self.feature_dim = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(3, first, stride=2)]
        inp = first
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        layers.append(ConvBNReLU6(inp, self.feature_dim, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))
        for m in self.modules():  # the reference initialisation (used when no weights are loaded)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def units(self) -> list:
        """The blocks of ``features`` in order: ``units()[:k]`` applied in turn give the map after k blocks."""
        return list(self.features)

    def unit_modules(self) -> list[nn.Module]:
        """The modules holding each unit's parameters, in the order of :meth:`units` (what freezing the first k
        units stops the gradient of)."""
        return list(self.features)

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled output of ``features``: (n, 1280)."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features_of(x))
