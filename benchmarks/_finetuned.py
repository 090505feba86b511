"""Features of a fine-tuned pretrained backbone (MobileNetV2, EfficientNet-Lite) whose first units stayed the
pretrained ones (the fine-tuning recipes freeze the first ``freeze_blocks`` units and every BatchNorm statistic).

The frozen blocks' output for a set of images is the same for every model fine-tuned from the same weights,
so it is computed once through ``extract_features`` (cached by weights, data and preprocessing) and only the
fine-tuned blocks run per model. :func:`finetuned_features` checks the result against the whole encoder on a
sample of images every call.
"""

from __future__ import annotations

import numpy as np
import torch

from conformood.data.arrays import to_float_images
from conformood.models import backbone_from_module, extract_features, get_backbone
from conformood.models.backbones import cache_dir


def _run(units: list, x: torch.Tensor) -> torch.Tensor:
    for unit in units:
        x = unit(x)
    return x


def trunk_features(images: np.ndarray, blocks: int, input_size: int, backbone: str = "mobilenet_v2"
                   ) -> torch.Tensor:
    """The frozen first ``blocks`` units' output maps of every image, flattened (cached)."""
    pretrained = get_backbone(backbone, input_size=input_size)
    units = pretrained.module.net.units()[:blocks]
    trunk = backbone_from_module(lambda x: _run(units, x).flatten(1), input_size=input_size,
                                 name=f"{backbone}-first-{blocks}-blocks", weights_digest=pretrained.weights_digest,
                                 mean=pretrained.mean, std=pretrained.std)
    return torch.from_numpy(extract_features(trunk, np.ascontiguousarray(images), cache=cache_dir() / "features"))


def head_features(model, trunk: torch.Tensor, blocks: int, input_size: int, batch: int = 1000) -> np.ndarray:
    """The fine-tuned encoder's pooled features from the frozen units' output."""
    net = model.encoder.net.net
    net.eval()
    units = net.units()
    with torch.no_grad():
        shape = _run(units[:blocks], torch.zeros(1, 3, input_size, input_size)).shape[1:]
        out = [_run(units[blocks:], trunk[s : s + batch].view(-1, *shape)).mean(dim=(2, 3))
               for s in range(0, trunk.shape[0], batch)]
    return torch.cat(out).numpy()


def finetuned_features(model, config: dict, images: np.ndarray, sample: int = 8) -> np.ndarray:
    """Features of ``images`` (n, 3, h, w) uint8 under a fine-tuned model loaded with ``load_trained_model``
    (``config`` is its stored configuration), checked against the whole encoder on ``sample`` images."""
    options = config.get("encoder_options") or {}
    blocks, size = int(options["freeze_blocks"]), int(options["input_size"])
    if blocks < 1:
        raise ValueError("the model has no frozen blocks: extract its features with extract_features directly")
    feats = head_features(model, trunk_features(images, blocks, size, config.get("encoder", "mobilenet_v2")),
                          blocks, size)
    rows = np.linspace(0, len(images) - 1, min(sample, len(images))).astype(int)
    direct = model.features(to_float_images(np.ascontiguousarray(images[rows]))).numpy()
    diff = float(np.abs(direct - feats[rows]).max() / (np.abs(direct).max() + 1e-12))
    if diff > 1e-4:
        raise RuntimeError(f"the cached-trunk features differ from the encoder's by {diff:.2e}")
    return feats
