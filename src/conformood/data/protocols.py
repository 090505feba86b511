"""Evaluation protocols that turn a labelled dataset into an OOD task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import ImageArrays
from .splits import Split


@dataclass
class OODTask:
    """One OOD problem: in-distribution training and calibration images, a mixed test set.

    ``is_inlier`` is True for test images of the in-distribution class(es).
    """

    name: str
    train: ImageArrays
    calibration: ImageArrays
    test: ImageArrays
    is_inlier: np.ndarray

    @property
    def test_is_inlier(self) -> np.ndarray:
        """Former name of :attr:`is_inlier`."""
        import warnings

        warnings.warn("OODTask.test_is_inlier is deprecated; use is_inlier", FutureWarning, stacklevel=2)
        return self.is_inlier
    outlier_exposure: ImageArrays | None = None


def one_vs_rest(data: ImageArrays, split: Split, normal_class: str | int) -> OODTask:
    """Class ``normal_class`` is in-distribution; every other class is an anomaly.

    Training and calibration keep only the normal class's images of their split parts; the test part keeps
    every class, labelled inlier or anomaly.
    """
    c = data.class_index(normal_class)
    train_idx = split.train[data.labels[split.train] == c]
    cal_idx = split.calibration[data.labels[split.calibration] == c]
    if train_idx.size == 0:
        raise ValueError(f"class {data.class_names[c]!r} has no training images in this split")
    if cal_idx.size == 0:
        raise ValueError(f"class {data.class_names[c]!r} has no calibration images in this split")
    test = data.subset(split.test)
    is_inlier = test.labels == c
    if is_inlier.all() or not is_inlier.any():
        raise ValueError("the test split needs both images of the normal class and of other classes")
    return OODTask(
        name=f"one-vs-rest:{data.class_names[c]}",
        train=data.subset(train_idx),
        calibration=data.subset(cal_idx),
        test=test,
        is_inlier=is_inlier,
    )


def _task(name: str, data: ImageArrays, split: Split, is_id_class: np.ndarray) -> OODTask:
    """Train and calibration keep the in-distribution classes of their parts; test keeps everything."""
    train_idx = split.train[is_id_class[data.labels[split.train]]]
    cal_idx = split.calibration[is_id_class[data.labels[split.calibration]]]
    if train_idx.size == 0 or cal_idx.size == 0:
        raise ValueError(f"{name}: the in-distribution classes have no training or calibration images in this split")
    test = data.subset(split.test)
    is_inlier = is_id_class[test.labels]
    if is_inlier.all() or not is_inlier.any():
        raise ValueError(f"{name}: the test split needs both in-distribution and OOD images")
    return OODTask(name, data.subset(train_idx), data.subset(cal_idx), test, is_inlier)


def leave_one_class_out(data: ImageArrays, split: Split, held_out_class: str | int) -> OODTask:
    """Every class but ``held_out_class`` is in-distribution (a multimodal ID set); the held-out class is OOD."""
    c = data.class_index(held_out_class)
    is_id = np.ones(len(data.class_names), dtype=bool)
    is_id[c] = False
    return _task(f"leave-one-class-out:{data.class_names[c]}", data, split, is_id)


def few_shot_ood(data: ImageArrays, split: Split, shots: int, seed: int = 0) -> OODTask:
    """Few-shot OOD (OECL paper section V-B): the largest class is normal; the next largest is "obtainable",
    with ``shots`` of its training images available as outlier exposure; every other class is unseen.

    Class sizes are counted on the whole dataset (ties go to the lower class index). The test split holds
    the normal class (inliers) and every other class (OOD, obtainable and unseen alike).
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    counts = np.bincount(data.labels, minlength=len(data.class_names))
    order = np.lexsort((np.arange(counts.size), -counts))
    normal, obtainable = int(order[0]), int(order[1])
    is_id = np.zeros(counts.size, dtype=bool)
    is_id[normal] = True
    task = _task(
        f"few-shot:{data.class_names[normal]}:{shots}-shot:{data.class_names[obtainable]}", data, split, is_id
    )
    pool = split.train[data.labels[split.train] == obtainable]
    if shots > pool.size:
        raise ValueError(f"{shots} shots requested but the obtainable class has {pool.size} training images")
    chosen = np.sort(np.random.default_rng(seed).choice(pool, size=shots, replace=False))
    task.outlier_exposure = data.subset(chosen)
    return task


def in_vs_out(in_data: ImageArrays, out_data: ImageArrays, split: Split, name: str = "in-vs-out",
              out_test_size: int | None = None, seed: int = 0) -> OODTask:
    """Near/far OOD between datasets: all of ``in_data``'s classes are in-distribution; test OOD images are
    ``out_data`` (a seeded sample of ``out_test_size`` images when given). Images must share one shape.
    Labelled multiclass ID data without using its labels is the "unlabeled multiclass" setting: ignore
    ``task.train.labels``."""
    if in_data.image_shape != out_data.image_shape:
        raise ValueError(f"in and out images differ in shape: {in_data.image_shape} vs {out_data.image_shape}")
    n_out = len(out_data) if out_test_size is None else int(out_test_size)
    if not 0 < n_out <= len(out_data):
        raise ValueError(f"out_test_size must lie in 1..{len(out_data)}, got {out_test_size}")
    out_idx = np.sort(np.random.default_rng(seed).choice(len(out_data), size=n_out, replace=False))
    test_in = in_data.subset(split.test)
    images = np.concatenate([test_in.images, out_data.images[out_idx].astype(test_in.images.dtype)])
    labels = np.concatenate([test_in.labels, np.full(n_out, -1)])
    test = ImageArrays(images, labels, list(in_data.class_names))  # OOD images carry label -1
    is_inlier = np.r_[np.ones(len(test_in), bool), np.zeros(n_out, bool)]
    return OODTask(name, in_data.subset(split.train), in_data.subset(split.calibration), test, is_inlier)


unlabeled_multiclass = in_vs_out
