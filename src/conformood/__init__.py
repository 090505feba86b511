"""conformood: contrastive out-of-distribution and anomaly detection with distribution-free (conformal) guarantees.

The layers (see ``docs/architecture.md``) are subpackages — ``data``, ``augment``, ``models``, ``losses``,
``train``, ``scores``, ``conformal``, ``metrics``, ``report``, ``experiments`` — and the names most users need
are also here, loaded on first use so that ``import conformood`` stays fast (torch, faiss and matplotlib are
imported only when something needs them)::

    import conformood as co

    detector = co.get_detector("knn_cosine", n_neighbors=5).fit(train_features)
    cd = co.ConformalDetector(detector).calibrate(calibration_features)
    flags = cd.predict(test_features, alpha=0.1)     # True = declared out-of-distribution
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    # detectors (higher score = more in-distribution)
    "BaseDetector": "scores",
    "DETECTORS": "scores",
    "KNNCosineDetector": "scores",
    "MahalanobisDetector": "scores",
    "detector_info": "scores",
    "get_detector": "scores",
    "list_detectors": "scores",
    # conformal calibration, sets and risk control
    "ConformalDetector": "conformal",
    "ConformalSetDetector": "conformal",
    "ConformalWarning": "conformal",
    "benjamini_hochberg": "conformal",
    "conformal_p_values": "conformal",
    "conformal_threshold": "conformal",
    "load_conformal_set": "conformal",
    "load_detector": "conformal",
    "load": "conformal",
    "train_conformal_set": "conformal",
    "crc_threshold": "conformal",
    "adaptive_correction": "conformal",
    # training
    "Trainer": "train",
    "TrainConfig": "train",
    "encode": "models",
    # metrics
    "ood_metrics": "metrics",
    "decision_metrics": "metrics",
    # data
    "load_named": "data",
    "train_calibration_test_split": "data",
    # experiments
    "DemoConfig": "experiments",
    "run_demo": "experiments",
    # the registry type
    "Registry": "registry",
    # process settings (the command applies it; a CPU training script may call it at its start)
    "keep_freed_memory": "allocator",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'conformood' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
