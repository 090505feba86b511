"""Labelled image arrays: the plain value every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import ArrayLike


def to_float_images(images: ArrayLike, name: str = "images") -> torch.Tensor:
    """Convert images to a float32 tensor (n, c, h, w) in [0, 1].

    Accepts (n, h, w) grayscale, (n, h, w, c) channels-last or (n, c, h, w) channels-first arrays or
    tensors with c in {1, 3}; uint8 is divided by 255, floats must already lie in [0, 1].
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif images.ndim == 4:
        if images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
            images = images.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"{name} must have shape (n, h, w), (n, h, w, c) or (n, c, h, w); got {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0).contiguous()
    if not torch.is_floating_point(images):
        raise ValueError(f"{name} must be uint8 or floating point, got {images.dtype}")
    images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if images.numel() and (images.min() < 0.0 or images.max() > 1.0):
        raise ValueError(
            f"float {name} must be scaled to [0, 1], got range [{images.min():.3g}, {images.max():.3g}]"
        )
    return images.contiguous()


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float batch (n, c, h, w) to ``size`` = (height, width); a no-op at that size."""
    import torch.nn.functional as F

    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"size must be positive, got {size}")
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """Bilinear resize of a float batch (n, c, h, w) to ``size``, antialiased when shrinking: the resize of every
    backbone's preprocessing (``models.preprocess_images``), and of images of mixed sizes read for it."""
    import torch.nn.functional as F

    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=x.shape[-1] > size[-1])


@dataclass
class ImageArrays:
    """Images (n, c, h, w) with integer labels and class names.

    ``images`` is uint8 (0..255) or float32 in [0, 1]; :meth:`tensor` gives float32 in [0, 1].
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)
    #: the file of each image (``class/file`` for an image folder), empty when the images came from arrays
    names: list[str] = field(default_factory=list)
    #: files of a folder that could not be read and were left out on request (``skip_bad``), with the reason
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels)
        if self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (n, c, h, w) with c in {{1, 3}}, got {self.images.shape}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},) to match images, got {self.labels.shape}"
            )
        if not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {self.labels.dtype}")
        self.labels = self.labels.astype(np.int64, copy=False)
        if self.names and len(self.names) != self.images.shape[0]:
            raise ValueError(f"names has {len(self.names)} entries for {self.images.shape[0]} images")
        if not self.class_names:
            self.class_names = [str(c) for c in range(int(self.labels.max(initial=-1)) + 1)]

    @classmethod
    def from_arrays(cls, images: ArrayLike, labels: ArrayLike, class_names: list[str] | None = None) -> ImageArrays:
        """Build from numpy arrays or torch tensors in any layout :func:`to_float_images` accepts.

        uint8 images stay uint8 (converted to channels-first); float images must lie in [0, 1].
        """
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 or (
            isinstance(images, np.ndarray) and images.dtype == np.uint8
        ):
            t = torch.as_tensor(images)
            if t.ndim == 3:
                t = t.unsqueeze(1)
            elif t.ndim == 4 and t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
                t = t.permute(0, 3, 1, 2)
            arr = t.contiguous().numpy()
        else:
            arr = to_float_images(images).numpy()
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        return cls(arr, np.asarray(labels), list(class_names or []))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: ArrayLike) -> ImageArrays:
        idx = np.asarray(indices, dtype=np.int64)
        names = [self.names[i] for i in idx] if self.names else []
        return ImageArrays(self.images[idx], self.labels[idx], list(self.class_names), names)

    def tensor(self, indices: ArrayLike | None = None) -> torch.Tensor:
        """Float32 tensor (n, c, h, w) in [0, 1] of all images or of ``indices``."""
        arr = self.images if indices is None else self.images[np.asarray(indices, dtype=np.int64)]
        return to_float_images(arr)

    def class_index(self, name_or_index: str | int) -> int:
        """Index of a class given by name or index."""
        if isinstance(name_or_index, (int, np.integer)):
            idx = int(name_or_index)
            if not 0 <= idx < len(self.class_names):
                raise ValueError(f"class index {idx} outside 0..{len(self.class_names) - 1}")
            return idx
        if name_or_index in self.class_names:
            return self.class_names.index(name_or_index)
        if str(name_or_index).isdigit():
            return self.class_index(int(name_or_index))
        raise ValueError(f"unknown class {name_or_index!r}; known: {self.class_names}")
