"""Evaluation protocols that turn a labelled dataset into an OOD task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import ImageArrays
from .splits import Split


@dataclass
class OODTask:
    """One OOD problem: in-distribution training and calibration images, a mixed test set.

    ``test_is_inlier`` is True for test images of the in-distribution class(es).
    """

    name: str
    train: ImageArrays
    calibration: ImageArrays
    test: ImageArrays
    test_is_inlier: np.ndarray


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
        test_is_inlier=is_inlier,
    )
