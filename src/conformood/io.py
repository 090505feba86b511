"""Saving and loading: safetensors for tensors, JSON for configuration, versioned, atomic, never pickle."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
_FORMAT_KEY = "conformood_format"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` atomically.

    A crash or interrupt while writing leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Write arrays to an uncompressed ``.npz`` (readable with ``allow_pickle=False``), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def save_state(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor | np.ndarray], config: Mapping[str, Any], kind: str
) -> None:
    """Save named tensors (safetensors) with a JSON configuration embedded in the file's metadata.

    ``kind`` names what is stored (e.g. ``"checkpoint"``, ``"KNNCosineDetector"``) and is checked on load.
    """
    from safetensors.torch import save_file

    data = {}
    for key, value in tensors.items():
        t = torch.tensor(value) if isinstance(value, np.ndarray) else value  # a copy: inputs may be read-only
        data[key] = t.detach().cpu().contiguous()
    metadata = {
        _FORMAT_KEY: str(FORMAT_VERSION),
        "kind": kind,
        "config": json.dumps(dict(config), default=_json_default),
    }
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=metadata)


def load_state(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load what :func:`save_state` wrote; returns ``(tensors, config)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved state at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    version = meta.get(_FORMAT_KEY)
    if version is None:
        raise ValueError(f"{path} is a safetensors file but not one written by conformood")
    if int(version) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version}; this conformood reads up to {FORMAT_VERSION}")
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{path} holds a {meta.get('kind')!r}, expected a {kind!r}")
    return tensors, json.loads(meta.get("config", "{}"))


def saved_kind(path: str | os.PathLike) -> str | None:
    """The ``kind`` recorded by :func:`save_state` in a file (None for other safetensors files)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("kind")
