"""Data sets by name, and named near/far OOD pairs between them.

Names: ``digits`` (bundled with scikit-learn), ``textile`` (the inspection images of the PyPI package
``conformal-clip-data``, a dependency), ``fashion-mnist`` (``apt-get install dataset-fashion-mnist``),
``cifar10`` (``cifar10-jpg.tar.gz``) and ``tinyimagenet-oe`` (``tinyimagenet_oe_32.npz``, unlabelled) read from
``data_dir`` (default ``$CONFORMOOD_DATA`` or ``../shared/data``). Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import read_npz
from ..registry import Registry
from .arrays import ImageArrays, resize_images
from .digits import load_digits_dataset
from .idx import load_fashion_mnist
from .image_folder import load_image_folder
from .protocols import OODTask, in_vs_out
from .splits import train_calibration_test_split

DATASETS: Registry = Registry("data set")

#: name -> (in-distribution data set, OOD data set, kind). "near": natural images of similar statistics;
#: "far": another modality (digits vs clothing, colour photographs vs grayscale line art).
NAMED_OOD_PAIRS: Registry = Registry("OOD pair")
for _name, _in, _out, _kind in (
    ("digits-vs-fashion-mnist", "digits", "fashion-mnist", "far"),
    ("fashion-mnist-vs-digits", "fashion-mnist", "digits", "far"),
    ("cifar10-vs-tinyimagenet", "cifar10", "tinyimagenet-oe", "near"),
    ("cifar10-vs-fashion-mnist", "cifar10", "fashion-mnist", "far"),
):
    NAMED_OOD_PAIRS.register(_name, lambda i=_in, o=_out, k=_kind: (i, o, k), description=f"{_in} vs {_out} ({_kind})",
                             in_data=_in, out_data=_out, kind=_kind)


def default_data_dir() -> Path:
    """``$CONFORMOOD_DATA``, or ``../shared/data``."""
    env = os.environ.get("CONFORMOOD_DATA")
    return Path(env) if env else Path("..") / "shared" / "data"


@DATASETS.register("digits", reference="scikit-learn load_digits", description="8x8 handwritten digits (bundled)")
def _digits(root: Path) -> ImageArrays:
    return load_digits_dataset()


TEXTILE_CLASSES = ("nominal", "local", "global")


@DATASETS.register("textile", reference="conformal-clip-data 0.1.4 (MIT), simulated textile images",
                   description="250x250 gray textile: 1,000 nominal, 500 local and 500 global defects (bundled)")
def load_textile(root: Path | None = None) -> ImageArrays:
    """The textile inspection images shipped by the ``conformal-clip-data`` package: gray 250x250 uint8, labels
    0 = nominal, 1 = local defect (a small patch of pixel noise), 2 = global defect (the texture changes)."""
    import importlib.util

    if importlib.util.find_spec("conformal_clip_data") is None:
        raise FileNotFoundError("the textile images come with the package conformal-clip-data: "
                                "pip install conformal-clip-data")
    from importlib.resources import files

    folder = Path(str(files("conformal_clip_data") / "data" / "textile_images" / "simulated"))
    data = load_image_folder(folder, mode="L")
    order = [data.class_names.index(c) for c in TEXTILE_CLASSES]
    remap = np.empty(len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))
    return ImageArrays(data.images, remap[data.labels], list(TEXTILE_CLASSES))


@DATASETS.register("fashion-mnist", reference="Xiao et al. 2017",
                   description="28x28 clothing (apt-get install dataset-fashion-mnist)")
def _fashion_mnist(root: Path) -> ImageArrays:
    tr, te = load_fashion_mnist("train"), load_fashion_mnist("test")
    return ImageArrays(np.concatenate([tr.images, te.images]), np.r_[tr.labels, te.labels], tr.class_names)


@DATASETS.register("cifar10", reference="Krizhevsky 2009", description="32x32 photographs (cifar10-jpg.tar.gz)")
def _cifar10(root: Path) -> ImageArrays:
    archive = root / "cifar10-jpg.tar.gz"
    tr, te = load_image_folder(archive, split="train"), load_image_folder(archive, split="test")
    return ImageArrays(np.concatenate([tr.images, te.images]), np.r_[tr.labels, te.labels], tr.class_names)


@DATASETS.register("tinyimagenet-oe", reference="Hendrycks et al. 2019 (outlier exposure)",
                   description="32x32 Tiny-ImageNet outlier pool, unlabelled (tinyimagenet_oe_32.npz)")
def _tinyimagenet_oe(root: Path) -> ImageArrays:
    path = root / "tinyimagenet_oe_32.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}; pass data_dir= to the folder holding tinyimagenet_oe_32.npz")
    x = read_npz(path, ("x",), "outlier pool")["x"]
    return ImageArrays.from_arrays(x, np.zeros(len(x), dtype=np.int64), ["tinyimagenet"])


def load_named(name: str, data_dir: str | os.PathLike | None = None) -> ImageArrays:
    """A whole data set by registry name (train and test parts together where the source has both)."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return DATASETS.get(name)(root)


def conform_images(data: ImageArrays, shape: tuple[int, int, int]) -> ImageArrays:
    """Convert images to ``shape`` = (channels, h, w): gray <-> RGB (repeat / channel mean) and bilinear resize.

    The result is float32 in [0, 1]; labels are kept.
    """
    x = data.tensor()
    c, h, w = shape
    if x.shape[1] != c:
        x = x.repeat(1, 3, 1, 1) if c == 3 else x.mean(dim=1, keepdim=True)
    x = resize_images(x, (h, w))
    return ImageArrays(x.numpy(), data.labels, list(data.class_names))


def named_ood_pair(
    name: str, data_dir: str | os.PathLike | None = None, seed: int = 0, out_test_size: int | None = None
) -> OODTask:
    """The in-vs-out task of a named pair: every class of the first data set is in-distribution (its labels
    may be ignored: the unlabeled multiclass setting), the second data set supplies the test OOD images,
    converted to the in-distribution image shape. The ID data is split 60/20/20 with ``seed``."""
    in_name, out_name, kind = NAMED_OOD_PAIRS.get(name)()
    in_data = load_named(in_name, data_dir)
    out_data = load_named(out_name, data_dir)
    if in_data.images.dtype != np.uint8 or out_data.image_shape != in_data.image_shape:
        in_data = conform_images(in_data, in_data.image_shape)
        out_data = conform_images(out_data, in_data.image_shape)
    split = train_calibration_test_split(in_data.labels, seed=seed)
    n_out = out_test_size if out_test_size is not None else min(len(out_data), len(split.test))
    return in_vs_out(in_data, out_data, split, name=f"{name} ({kind} OOD)", out_test_size=n_out, seed=seed)


__all__ = ["DATASETS", "NAMED_OOD_PAIRS", "TEXTILE_CLASSES", "conform_images", "load_named", "load_textile",
           "named_ood_pair"]
