"""Reproducible randomness for code that draws from torch's global generator (kornia)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded_from(generator: torch.Generator | None) -> Iterator[None]:
    """Run the block with torch's global CPU generator seeded from ``generator``, then restore it.

    Without a generator the block uses the global generator as it is. The library never reseeds the
    global generator for good: its state is forked and restored.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
