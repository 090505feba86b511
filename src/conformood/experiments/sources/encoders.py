"""Images as read from a source, and the encoders that turn them into features with a record of how."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._validation import check_positive_int
from ...io import file_digest, read_npz
from .features import Features


@dataclass
class Images:
    """Images as read from a source: uint8 or float (n, c, h, w), labels when the source has them, and the file
    names of a folder (``class/file``, in the order of the arrays)."""

    images: np.ndarray
    labels: np.ndarray | None = None
    names: list[str] | None = None
    class_names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable files left out on request, with the reason


def read_images(images: str | os.PathLike, split: str | None = None, size: tuple[int, int] | None = None,
                skip_bad: bool = False) -> Images:
    """Images of an ``.npz`` (``images``, optional ``labels`` and ``names``), or of an image folder or tar
    archive (``[split/]class/*``, sorted by class folder, then file name). With ``size``, folder images of mixed
    sizes are each resized to it as the encoder's preprocessing would (bilinear, antialiased when shrinking)."""
    from ...data import ImageArrays, load_image_folder

    path = Path(images)
    if path.suffix == ".npz":
        arrays = read_npz(path, ("images",), "images file")
        x, labels = arrays["images"], arrays.get("labels")
        data = ImageArrays.from_arrays(x, np.zeros(len(x), np.int64) if labels is None else labels)
        names = [str(s) for s in arrays["names"]] if "names" in arrays else None
        if names is not None and len(names) != len(data):
            raise ValueError(f"{path}: 'names' has {len(names)} entries for {len(data)} images")
        return Images(data.images, None if labels is None else data.labels, names)
    data = load_image_folder(path, split=split, mixed_sizes_to=None if size is None else tuple(size),
                             skip_bad=skip_bad)
    return Images(data.images, data.labels, list(data.names) or None, list(data.class_names), list(data.skipped))


@dataclass
class Encoder:
    """Images -> features, with the record of how (:attr:`record`). Build one with :func:`get_encoder`."""

    kind: str  # "backbone" or "model"
    net: Any
    record: dict
    model_config: dict = field(default_factory=dict)

    def encode(self, images: Any, batch_size: int = 128, device: str | None = None, progress: bool = False,
               cache: bool = True) -> np.ndarray:
        """Features of uint8 images (n, c, h, w) or (n, h, w, c), float images in [0, 1], or a Dataset. Pooled
        backbone features are cached unless ``cache`` is False."""
        if self.kind == "backbone":
            from ...models import extract_features
            from ...models.backbones import cache_dir

            # pooled features are cached (small, and read again often); patch features are not (gigabytes)
            folder = cache_dir() / "features" if cache and self.net.weights_digest and self.net.output == "pooled" \
                else None
            return extract_features(self.net, images, batch_size=batch_size, device=device, progress=progress,
                                    cache=folder)
        return self.net.features(self._model_input(images)).numpy()

    def _model_input(self, images: Any) -> Any:
        """Images as a trained model takes them: float, its channels, resized to the size it was trained at."""
        from ...data import resize_images
        from ...models.extract import as_images

        tensor = as_images(images)
        channels = int(self.model_config["in_channels"])
        if tensor.shape[1] != channels:
            raise ValueError(f"the images have {tensor.shape[1]} channels; {self.record['model']} takes {channels}")
        size = self.record["input_size"]
        return resize_images(tensor, (size[0], size[1]))

    def logits(self, images: Any) -> np.ndarray | None:
        """Class logits of a trained model with a classifier head (None otherwise)."""
        if self.kind != "model" or getattr(self.net, "aux_head", None) is None:
            return None
        import torch

        from ...models import encode

        return encode(torch.nn.Sequential(self.net.encoder, self.net.aux_head), self._model_input(images)).numpy()


def get_encoder(model: str | os.PathLike | None = None, backbone: str | None = None,
                weights: str | None = "imagenet", input_size: int | None = None, **backbone_options: Any) -> Encoder:
    """The encoder of a trained model (``model``: its ``model.safetensors``) or of a registered backbone
    (``backbone``, frozen, with ``weights`` and ``input_size``, default 224); exactly one of the two."""
    if (model is None) == (backbone is None):
        raise ValueError("images need exactly one of a trained model (--model) or a backbone (--backbone)")
    if backbone is not None:
        from ...models import get_backbone

        size = 224 if input_size is None else check_positive_int(input_size, "input_size", minimum=8)
        net = get_backbone(backbone, weights=weights, input_size=size, **backbone_options)
        record = {"kind": "backbone", "backbone": backbone, "weights": _weights_label(weights),
                  "weights_digest": net.weights_digest, **net.preprocessing()}
        return Encoder("backbone", net, record)
    from ...train.recipes import load_trained_model

    net, cfg = load_trained_model(model)
    size = int(cfg.get("image_size", 32))
    if input_size is not None and int(input_size) != size:
        raise ValueError(f"input_size: {model} was trained at {size} x {size}; its features are made at that size, "
                         f"not {input_size}")
    record = {"kind": "model", "model": Path(model).name, "model_sha256": file_digest(model),
              "encoder": cfg.get("encoder", "small_cnn"), "input_size": [size, size],
              "resize": "bilinear (resize_images)"}
    return Encoder("model", net, record, cfg)


def _weights_label(weights: object) -> str | None:
    """How the weights were named ('imagenet', a file name, or None for random); informative only, the digest
    is what is compared."""
    return None if weights is None else weights if weights == "imagenet" else Path(str(weights)).name


def image_features(images: str | os.PathLike | Images, encoder: Encoder, batch_size: int = 128,
                   device: str | None = None, progress: bool = False, with_logits: bool = False,
                   skip_bad: bool = False) -> Features:
    """Features of images (a path as :func:`read_images` reads, or ImageArrays) through ``encoder``."""
    data = read_images(images, size=encoder.record["input_size"], skip_bad=skip_bad) \
        if isinstance(images, (str, os.PathLike)) else images
    origin = str(images) if isinstance(images, (str, os.PathLike)) else "the images"
    x = encoder.encode(data.images, batch_size=batch_size, device=device, progress=progress)
    return Features(x, data.labels, encoder.logits(data.images) if with_logits else None, names=data.names,
                    source=dict(encoder.record), origin=origin, skipped=list(data.skipped))
