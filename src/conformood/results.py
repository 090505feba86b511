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
``provenance``           where the result came from: conformood version and git commit, the command line, the
                         full merged config, the seed, the SHA-256 of every input file, python / torch / numpy
                         versions and the time it was made (:func:`provenance`)
======================== =====================================================================================
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._digest import file_digest
from ._version import __version__
from .allocator import allocator_state

SCHEMA = "conformood.result/1"


def result_header(kind: str, config: Mapping[str, Any],
                  inputs: Mapping[str, str | os.PathLike | None] | None = None) -> dict[str, Any]:
    """The keys every result starts with: schema, what kind of result it is, the version, the config and the
    provenance block (``inputs``: name -> file whose digest it records)."""
    return {"schema": SCHEMA, "kind": kind, "conformood_version": __version__, "config": dict(config),
            "provenance": provenance(config, inputs)}


def provenance(config: Mapping[str, Any], inputs: Mapping[str, str | os.PathLike | None] | None = None,
               seed: int | None = None) -> dict[str, Any]:
    """Where a result came from: the conformood version and git commit (when the package runs from a git
    checkout; ``dirty`` when it has uncommitted changes), the command line, the full config, the seed (from
    the config unless given), each input file's path and SHA-256 (folders and names of built-in data sets are
    recorded as given), the python / torch / numpy versions and the UTC time."""
    import numpy as np

    files = {}
    for name, value in (inputs or {}).items():
        if value is None:
            continue
        path = Path(value)
        files[name] = {"path": str(value), "sha256": file_digest(path) if path.is_file() else None}
    torch = sys.modules.get("torch")
    return {
        "conformood_version": __version__,
        "git": _git_state(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else None,
        "config": dict(config),
        "seed": seed if seed is not None else dict(config).get("seed"),
        "inputs": files,
        "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None),
        "numpy": np.__version__,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


@functools.lru_cache(maxsize=1)
def _git_state() -> dict[str, Any] | None:
    """The commit of the checkout this package runs from, and whether it has uncommitted changes; None for an
    installed wheel or when git is unavailable."""
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        if top.returncode != 0 or not (Path(top.stdout.strip()) / "src" / "conformood").is_dir():
            return None
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def environment(**extra: Any) -> dict[str, Any]:
    """Python, torch and numpy versions, the torch thread count and the memory allocator (both change CPU
    times), plus ``extra`` (e.g. the device)."""
    import numpy as np
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "threads": torch.get_num_threads(), "allocator": allocator_state(), **extra}
