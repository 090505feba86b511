"""``conformood extract``: a backbone's features of a data set, as the ``.npz`` that ``conformood evaluate`` reads.

The images come from a named data set (``cifar10``, ``fashion-mnist``, …, train and test parts together) or an
image folder / tar archive (``--split train`` picks ``train/``). ``classes`` keeps some classes, ``take``
(``START:STOP``) a range of the remaining images in their stored order, so that training and calibration files
can come from disjoint parts of one split; ``inlier_classes`` adds ``is_inlier`` for a test file. The file holds
``features``, ``labels`` and the provenance of the extraction (backbone, weights digest, preprocessing).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._validation import check_positive_int
from ..io import write_npz
from ..results import provenance


@dataclass
class ExtractConfig:
    """What to extract: backbone and weights, data and the part of it, and how to batch."""

    data: str
    backbone: str = "mobilenet_v2"
    weights: str | None = "imagenet"
    input_size: int = 224
    split: str | None = None
    classes: list[int] | None = None
    take: str | None = None
    inlier_classes: list[int] | None = None
    batch_size: int = 128
    device: str | None = None

    def __post_init__(self) -> None:
        from ..models import BACKBONES

        BACKBONES.info(self.backbone)
        check_positive_int(self.input_size, "input_size", minimum=8)
        check_positive_int(self.batch_size, "batch_size")
        _parse_take(self.take)


def _parse_take(take: str | None) -> slice:
    if take is None:
        return slice(None)
    start, sep, stop = take.partition(":")
    try:
        if not sep:
            raise ValueError
        return slice(int(start) if start else None, int(stop) if stop else None)
    except ValueError:
        raise ValueError(f"take must be START:STOP (e.g. 0:4000), got {take!r}") from None


def extract_file(cfg: ExtractConfig, out: str | os.PathLike, progress: bool = True) -> dict:
    """Extract the features ``cfg`` asks for and write them to ``out`` (an ``.npz``); returns a summary."""
    from ..data import DATASETS, load_image_folder, load_named
    from ..models import extract_features, get_backbone
    from ..models.backbones import cache_dir

    if cfg.data in DATASETS:
        if cfg.split not in (None, "all"):
            raise ValueError(f"the named data set {cfg.data!r} holds its train and test parts together; give an "
                             "image folder or archive for --split, or use --take")
        data = load_named(cfg.data)
    else:
        data = load_image_folder(cfg.data, split=cfg.split)
    index = np.arange(len(data.labels))
    if cfg.classes is not None:
        unknown = sorted(set(cfg.classes) - set(np.unique(data.labels).tolist()))
        if unknown:
            raise ValueError(f"classes {unknown} are not in {cfg.data} (classes 0..{len(data.class_names) - 1})")
        index = index[np.isin(data.labels, cfg.classes)]
    index = index[_parse_take(cfg.take)]
    if index.size == 0:
        raise ValueError("no images left after --classes and --take")
    backbone = get_backbone(cfg.backbone, weights=cfg.weights, input_size=cfg.input_size)
    images = data.images[index]
    features = extract_features(backbone, images, batch_size=cfg.batch_size, device=cfg.device, progress=progress,
                                cache=cache_dir() / "features" if backbone.weights_digest else None)
    labels = data.labels[index]
    arrays = {"features": features, "labels": labels}
    if cfg.inlier_classes is not None:
        arrays["is_inlier"] = np.isin(labels, cfg.inlier_classes)
    record = provenance({**asdict(cfg), "weights_digest": backbone.weights_digest,
                         "preprocessing": backbone.preprocessing()},
                        None if cfg.data in DATASETS else {"data": cfg.data})
    arrays["provenance"] = np.array(json.dumps(record))
    write_npz(Path(out), **arrays)
    return {"n": int(features.shape[0]), "dim": int(features.shape[1]), "out": str(out),
            "classes": sorted(np.unique(labels).tolist()),
            "n_inliers": int(arrays["is_inlier"].sum()) if "is_inlier" in arrays else None}
