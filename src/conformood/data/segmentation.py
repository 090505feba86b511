"""Binary segmentation data: ``.npz`` files, image/mask folders, CamVid, and a synthetic generator.

All loaders return :class:`SegmentationData` with RGB images ``(n, h, w, 3)`` uint8 and boolean masks
``(n, h, w)``. Risk control is defined only for images whose mask is non-empty (|Y| > 0,
``coat-adaptive-threshold-segmentation.md`` §2.1); :meth:`SegmentationData.nonempty` drops the others and
reports how many it dropped, so nothing disappears silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from ..io import read_npz
from .named import default_data_dir

CAMVID_FILE = "camvid_120x90.npz"
CAMVID_DEFAULT_CLASS = "car"
_MASK_EXTENSIONS = (".png", ".bmp", ".gif", ".tif", ".tiff")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class SegmentationData:
    """Images ``(n, h, w, 3)`` uint8 with binary masks ``(n, h, w)`` bool."""

    images: np.ndarray
    masks: np.ndarray

    def __post_init__(self) -> None:
        images, masks = self.images, self.masks
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (n, h, w, 3), got {images.dtype} {images.shape}")
        if masks.dtype != bool or masks.shape != images.shape[:3]:
            raise ValueError(
                f"masks must be bool with shape {images.shape[:3]} matching the images, got {masks.dtype} {masks.shape}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @classmethod
    def from_arrays(cls, images: ArrayLike, masks: ArrayLike) -> SegmentationData:
        """Check and convert arrays: images uint8 (n, h, w, 3) (grey (n, h, w) is repeated), masks in {0, 1}."""
        x = np.asarray(images)
        y = np.asarray(masks)
        if x.ndim == 3:
            x = np.repeat(x[..., None], 3, axis=-1)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"images must have shape (n, h, w, 3), got {x.shape}")
        if x.dtype != np.uint8:
            raise ValueError(f"images must be uint8 in 0..255, got {x.dtype}")
        if y.shape != x.shape[:3]:
            raise ValueError(f"masks must have shape {x.shape[:3]} to match the images, got {y.shape}")
        if y.dtype != bool:
            if not np.issubdtype(y.dtype, np.number) or not np.all((y == 0) | (y == 1)):
                raise ValueError("masks must contain only 0 and 1 (binary segmentation)")
            y = y.astype(bool)
        if x.shape[0] == 0:
            raise ValueError("no images: a segmentation data set needs at least one image")
        return cls(np.ascontiguousarray(x), np.ascontiguousarray(y))

    def subset(self, index: ArrayLike) -> SegmentationData:
        return SegmentationData(self.images[index], self.masks[index])

    def concat(self, other: SegmentationData) -> SegmentationData:
        if other.images.shape[1:] != self.images.shape[1:]:
            raise ValueError(f"cannot join images of shape {self.images.shape[1:]} and {other.images.shape[1:]}")
        return SegmentationData(
            np.concatenate([self.images, other.images]), np.concatenate([self.masks, other.masks])
        )

    def nonempty(self) -> tuple[SegmentationData, int]:
        """The images with |Y| > 0, and the number of images dropped for an empty mask."""
        keep = np.count_nonzero(self.masks.reshape(len(self), -1), axis=1) > 0
        return self.subset(keep), int(np.count_nonzero(~keep))

    def float_images(self) -> np.ndarray:
        """Images as float32 (n, 3, h, w) in [0, 1]."""
        return np.ascontiguousarray(self.images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def load_segmentation_npz(path: str | os.PathLike) -> SegmentationData:
    """A binary segmentation set from an ``.npz`` with ``x`` (n, h, w, 3) uint8 and ``y`` (n, h, w) in {0, 1}."""
    f = read_npz(path, ("x", "y"), "segmentation file (x: images, y: masks)")
    return SegmentationData.from_arrays(f["x"], f["y"])


def load_segmentation_folders(image_dir: str | os.PathLike, mask_dir: str | os.PathLike) -> SegmentationData:
    """Images and masks matched by file stem. Masks: 0 = background, any of 1 or 255 = foreground."""
    from PIL import Image

    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise ValueError(f"no folder {d}")
    images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTENSIONS}
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in _MASK_EXTENSIONS}
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        raise ValueError(f"{len(unmatched)} image(s)/mask(s) without a partner, e.g. {unmatched[:3]}")
    if not images:
        raise ValueError(f"no images in {image_dir}")
    xs, ys = [], []
    for stem in sorted(images):
        x = np.asarray(Image.open(images[stem]).convert("RGB"))
        y = np.asarray(Image.open(masks[stem]).convert("L"))
        if y.shape != x.shape[:2]:
            raise ValueError(f"mask {masks[stem].name} is {y.shape}, image is {x.shape[:2]}")
        values = np.unique(y)
        if not set(values.tolist()) <= {0, 1, 255}:
            raise ValueError(f"mask {masks[stem].name} is not binary (values {values[:5].tolist()}...)")
        xs.append(x)
        ys.append(y > 0)
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {sorted(shapes)[:3]}; resize them to one size first")
    return SegmentationData(np.stack(xs), np.stack(ys))


def camvid_classes(path: str | os.PathLike | None = None) -> list[str]:
    """The names of CamVid label ids 0–11 stored in the file."""
    return [str(c) for c in read_npz(camvid_path(path), ("classes",), "CamVid file")["classes"]]


def camvid_path(path: str | os.PathLike | None = None) -> Path:
    """The CamVid file: ``path`` (the file or its folder), or the data root's ``camvid_120x90.npz``."""
    p = Path(path) if path is not None else default_data_dir() / CAMVID_FILE
    if p.is_dir():
        p = p / CAMVID_FILE
    if not p.is_file():
        raise ValueError(f"no CamVid file at {p}; pass the path of {CAMVID_FILE} (or set $CONFORMOOD_DATA)")
    return p


def load_camvid(
    path: str | os.PathLike | None = None,
    class_name: str | int = CAMVID_DEFAULT_CLASS,
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> dict[str, SegmentationData]:
    """CamVid (120×90) as binary masks of one class (default car, label 8), per split."""
    p = camvid_path(path)
    f = read_npz(p, ("classes",), "CamVid file")
    classes = [str(c) for c in f["classes"]]
    if isinstance(class_name, str) and not class_name.isdigit():
        if class_name not in classes:
            raise ValueError(f"unknown CamVid class {class_name!r}; choose from {classes}")
        label = classes.index(class_name)
    else:
        label = int(class_name)
        if not 0 <= label < len(classes):
            raise ValueError(f"CamVid label must be in 0..{len(classes) - 1}, got {label}")
    out = {}
    for split in splits:
        if f"x_{split}" not in f or f"labels_{split}" not in f:
            raise ValueError(f"CamVid file {p} has no split {split!r}")
        out[split] = SegmentationData(np.ascontiguousarray(f[f"x_{split}"]), f[f"labels_{split}"] == label)
    return out


def synthetic_segmentation(
    n: int, height: int = 32, width: int = 32, seed: int = 0
) -> tuple[SegmentationData, np.ndarray]:
    """Random ellipse objects on noisy backgrounds, with simulated probability maps of varying quality.

    Returns the data and probability maps ``(n, h, w)`` float32 in [0, 1]. Each image has a hidden
    "difficulty" that lowers the object's probabilities, and the image's brightness reveals it — so an
    image-adaptive threshold can do better than one global threshold, as on real data.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = np.empty((n, height, width, 3), dtype=np.uint8)
    masks = np.empty((n, height, width), dtype=bool)
    probs = np.empty((n, height, width), dtype=np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
        ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
        r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        masks[i] = r <= 1.0
        difficulty = rng.uniform(0.0, 1.0)
        signal = (1.0 - r) * 4.0 - 3.0 * difficulty
        logits = signal + rng.normal(0.0, 0.8, size=signal.shape)
        probs[i] = 1.0 / (1.0 + np.exp(-logits))
        base = 60 + 150 * difficulty
        img = base + 40 * masks[i][..., None] + rng.normal(0, 10, size=(height, width, 3))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return SegmentationData(images, masks), probs
