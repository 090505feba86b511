"""``conformood extract``: a backbone's or a trained model's features of a data set, as the ``.npz`` that
``conformood evaluate`` reads.

The images come from a named data set (``cifar10``, ``fashion-mnist``, …, train and test parts together) or an
image folder / tar archive (``--split train`` picks ``train/``). ``classes`` keeps some classes (by name or
index), ``take`` (``START:STOP``) a range of the remaining images in their stored order, so that training and
calibration files can come from disjoint parts of one split; ``inlier_classes`` adds ``is_inlier`` for a test
file. The file holds ``features``, ``labels``, the image ``names`` of a folder, the ``feature_source`` record
(:mod:`conformood.experiments.sources`: what evaluate and score compare) and the provenance of the extraction.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._validation import check_positive_int
from ..results import provenance
from .sources import Features, get_encoder, write_features


@dataclass
class ExtractConfig:
    """What to extract: backbone and weights, data and the part of it, and how to batch."""

    data: str
    backbone: str | None = "mobilenet_v2"
    weights: str | None = "imagenet"
    input_size: int | None = None  # default: 224 for a backbone, the training size for a model
    split: str | None = None
    classes: list[int | str] | None = None
    take: str | None = None
    inlier_classes: list[int | str] | None = None
    batch_size: int = 128
    device: str | None = None
    model: str | None = None  # a model from `conformood train`, instead of the backbone
    skip_bad: bool = False  # leave out unreadable images of a folder, listed in the file's 'skipped'

    def __post_init__(self) -> None:
        from ..models import BACKBONES

        if self.model is not None:
            self.model, self.backbone = str(self.model), None
        if self.backbone is not None:
            BACKBONES.info(self.backbone)
        if self.input_size is not None:
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


def _class_indices(requested: list[int | str], class_names: list[str], data: str) -> list[int]:
    """Classes by name or index (a digit string is an index unless it is a class name)."""
    out = []
    for c in requested:
        if isinstance(c, str) and c in class_names:
            out.append(class_names.index(c))
        elif str(c).isdigit() and int(c) < len(class_names):
            out.append(int(c))
        else:
            raise ValueError(f"class {c!r} is not in {data} (classes 0..{len(class_names) - 1}: "
                             f"{', '.join(class_names)})")
    return out


def extract_file(cfg: ExtractConfig, out: str | os.PathLike, progress: bool = True) -> dict:
    """Extract the features ``cfg`` asks for and write them to ``out`` (an ``.npz``); returns a summary."""
    from ..data import DATASETS, load_image_folder, load_named

    encoder = get_encoder(cfg.model, cfg.backbone, cfg.weights, cfg.input_size)
    if cfg.data in DATASETS:
        if cfg.split not in (None, "all"):
            raise ValueError(f"the named data set {cfg.data!r} holds its train and test parts together; give an "
                             "image folder or archive for --split, or use --take")
        data = load_named(cfg.data)
    else:
        data = load_image_folder(cfg.data, split=cfg.split, mixed_sizes_to=tuple(encoder.record["input_size"]),
                                 skip_bad=cfg.skip_bad)
    index = np.arange(len(data.labels))
    if cfg.classes is not None:
        index = index[np.isin(data.labels, _class_indices(cfg.classes, data.class_names, cfg.data))]
    index = index[_parse_take(cfg.take)]
    if index.size == 0:
        raise ValueError("no images left after --classes and --take")
    features = encoder.encode(data.images[index], batch_size=cfg.batch_size, device=cfg.device, progress=progress)
    labels = data.labels[index]
    feats = Features(features, labels, names=[data.names[i] for i in index] if data.names else None,
                     source=dict(encoder.record))
    if cfg.inlier_classes is not None:
        feats.is_inlier = np.isin(labels, _class_indices(cfg.inlier_classes, data.class_names, cfg.data))
    inputs = ({"data": cfg.data} if cfg.data not in DATASETS else {}) | ({"model": cfg.model} if cfg.model else {})
    record = provenance({**asdict(cfg), "feature_source": encoder.record}, inputs or None)
    write_features(Path(out), feats, provenance=np.array(json.dumps(record)),
                   **({"skipped": np.array(data.skipped)} if data.skipped else {}))
    return {"n": int(features.shape[0]), "dim": int(features.shape[1]), "out": str(out),
            "classes": sorted(np.unique(labels).tolist()),
            "n_inliers": int(feats.is_inlier.sum()) if feats.is_inlier is not None else None,
            "skipped": list(data.skipped)}
