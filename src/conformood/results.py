"""One result schema for every JSON result (demo, train, evaluate, reproduce, benchmarks).

Every result starts with the same header — ``schema``, ``kind``, ``conformood_version``, ``config`` — and uses
the same keys for the same quantities:

======================== =====================================================================================
key                      meaning
======================== =====================================================================================
``auroc`` …              OOD metrics with in-distribution as the positive class (:mod:`conformood.metrics`)
``realised_fpr_at_alpha`` fraction of test *inliers* flagged at level α (guaranteed ≤ α in expectation)
``ood_flagged_at_alpha`` fraction of test OOD inputs flagged at level α (the power of the decision)
``bh_discoveries``       inputs selected by Benjamini–Hochberg at level α; ``bh_fdp``, ``bh_power`` likewise
``is_inlier``            boolean per input, True for in-distribution (the one OOD-label convention)
``wall_time_s``          wall-clock seconds of the whole run
``environment``          python, torch and numpy versions, threads, device
======================== =====================================================================================
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any

from ._version import __version__

SCHEMA = "conformood.result/1"


def result_header(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The keys every result starts with: schema, what kind of result it is, the version and the config."""
    return {"schema": SCHEMA, "kind": kind, "conformood_version": __version__, "config": dict(config)}


def environment(**extra: Any) -> dict[str, Any]:
    """Python, torch and numpy versions and the torch thread count, plus ``extra`` (e.g. the device)."""
    import numpy as np
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "threads": torch.get_num_threads(), **extra}
