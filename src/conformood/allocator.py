"""Keep freed memory in the process instead of handing it back to the operating system (glibc only).

On CPU, a training step allocates and frees many activation tensors of tens to hundreds of megabytes. glibc
serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and returns it with
``munmap`` when freed, so the next step touches every page of it again: one page fault and one zeroed page per
4 KiB. Measured on MobileNetV2 at 128 × 128, one thread, that kernel work was more than half of the time: a
fine-tuning step (batch 64) took 6.95 s with glibc's default and 2.62 s with freed memory kept, extraction
2.49 s and 1.01 s per batch of 128 (``benchmarks/allocator.py``). :func:`keep_freed_memory` turns it off with
two ``mallopt`` calls — serve large blocks from the heap (``M_MMAP_MAX = 0``) and never trim it
(``M_TRIM_THRESHOLD = -1``) — so freed blocks are reused, as PyTorch's CUDA caching allocator does on a GPU.
The price is that the process keeps its peak memory until it exits (1.24–1.36× the peak resident memory in that
benchmark).

The ``conformood`` command applies it at start (``CONFORMOOD_KEEP_FREED_MEMORY=0`` turns that off); a Python
program that trains on CPU can call it once at its own start. It changes the whole process, which is why the
library never calls it on import. Elsewhere (macOS, Windows, musl) it does nothing and returns False.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

__all__ = ["ENV_VAR", "allocator_state", "keep_freed_memory", "wanted"]

#: set to ``0`` to keep glibc's default behaviour in the ``conformood`` command
ENV_VAR = "CONFORMOOD_KEEP_FREED_MEMORY"

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, <malloc.h>
_M_MMAP_MAX = -4

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module docstring); True when it now does.

    Idempotent. Returns False, changing nothing, where the C library is not glibc or ``mallopt`` refuses.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; -1 as the trim threshold means "never trim" (mallopt(3))
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    return _applied


def wanted(environ: dict[str, str] | None = None) -> bool:
    """Whether ``CONFORMOOD_KEEP_FREED_MEMORY`` asks for :func:`keep_freed_memory` (unset: yes).

    Raises:
        ValueError: for a value other than 1/0, true/false, yes/no or on/off.
    """
    value = (os.environ if environ is None else environ).get(ENV_VAR, "1").strip().lower()
    if value in {"", "1", "true", "yes", "on"}:  # set but empty: as if unset
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{ENV_VAR} must be 1 or 0 (true/false, yes/no, on/off), got {value!r}")


def allocator_state() -> dict[str, Any]:
    """What serves this process's memory, for a result's environment block: the C library, whether
    :func:`keep_freed_memory` is in effect, and any allocator preloaded with ``LD_PRELOAD`` (with its
    ``MALLOC_CONF``), since all three change CPU times."""
    preload = os.environ.get("LD_PRELOAD") or None
    state: dict[str, Any] = {"libc": "-".join(p for p in platform.libc_ver() if p) or None,
                             "keep_freed_memory": _applied,
                             "ld_preload": " ".join(os.path.basename(p) for p in preload.split()) if preload else None}
    if preload and os.environ.get("MALLOC_CONF"):
        state["malloc_conf"] = os.environ["MALLOC_CONF"]
    return state
