"""Datasets, seeded splits and OOD protocols."""

from .arrays import ImageArrays, resize_images, to_float_images
from .digits import load_digits_dataset
from .idx import load_fashion_mnist, read_idx
from .image_folder import decode_image, default_cache_dir, list_image_folder, load_image_folder
from .named import (
    DATASETS,
    NAMED_OOD_PAIRS,
    TEXTILE_CLASSES,
    conform_images,
    default_data_dir,
    load_named,
    load_textile,
    named_ood_pair,
)
from .protocol_registry import PROTOCOLS, parse_protocol, protocol_help, protocol_task
from .protocols import (
    OODTask,
    few_shot_ood,
    in_vs_out,
    leave_one_class_out,
    one_vs_rest,
    unlabeled_multiclass,
)
from .splits import Split, train_calibration_test_split

__all__ = [
    "DATASETS",
    "NAMED_OOD_PAIRS",
    "PROTOCOLS",
    "default_data_dir",
    "parse_protocol",
    "protocol_help",
    "protocol_task",
    "conform_images",
    "load_named",
    "load_textile",
    "TEXTILE_CLASSES",
    "named_ood_pair",
    "ImageArrays",
    "OODTask",
    "Split",
    "default_cache_dir",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_image_folder",
    "list_image_folder",
    "decode_image",
    "few_shot_ood",
    "in_vs_out",
    "leave_one_class_out",
    "one_vs_rest",
    "read_idx",
    "unlabeled_multiclass",
    "resize_images",
    "to_float_images",
    "train_calibration_test_split",
]
