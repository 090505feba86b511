"""Saving and loading: safetensors for tensors, JSON for configuration, versioned, atomic, never pickle.

Every artefact is one safetensors file whose metadata holds the format version, the kind of object, its JSON
configuration and a SHA-256 digest over the kind, the configuration and every tensor (name, dtype, shape and
bytes). :func:`load_state` refuses a file whose digest does not match, so a flipped byte, a truncated file or
a swapped part is an error, never a silently different model. The digest detects corruption and accidental
swaps; it is not a signature, so loaders still validate every stored field (:func:`load_module_state` checks
every key and shape of a module before allocating it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._digest import file_digest as file_digest  # re-exported: one digest helper for artefacts and results

FORMAT_VERSION = 2  # 2: the digest (files of version 1 carry none and are refused)
_FORMAT_KEY = "conformood_format"
_DIGEST_KEY = "digest"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` atomically.

    A crash or interrupt while writing leaves any previous file at ``path`` untouched. The file gets the mode
    that ``open`` would give it (0666 less the process umask: 0644 under umask 022), not the temporary's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask (read without changing it, from /proc where there is one)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that :func:`atomic_path` leaves beside ``path`` when a process is killed while
    writing (``.<name>.*.tmp``); returns what was removed. Call it when a run starts, before it writes."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = [p for p in path.parent.glob(f".{glob_escape(path.name)}.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


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


def read_npz(path: str | os.PathLike, required: tuple[str, ...] = (), what: str = "file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read without pickle. A missing file is a FileNotFoundError; a directory,
    an empty, truncated or corrupt file, object arrays or a missing ``required`` array are a ValueError naming
    the file and what was expected."""
    import zipfile

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} {path}")
    if not path.is_file():
        raise ValueError(f"{path} is a directory, expected an .npz {what}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty, expected an .npz {what}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("it holds a single .npy array, not named arrays")
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path} is not a readable .npz {what} (corrupt, truncated, pickled or another format: "
                         f"{exc})") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise ValueError(f"{path} lacks the array(s) {missing}; it holds {sorted(arrays)}")
    return arrays


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def state_digest(tensors: Mapping[str, torch.Tensor], kind: str, config_json: str) -> str:
    """SHA-256 over the kind, the configuration text and each tensor's name, dtype, shape and bytes (in name
    order, so independent of the file's layout)."""
    h = hashlib.sha256()
    for part in (kind, config_json):
        h.update(len(part.encode()).to_bytes(8, "little"))
        h.update(part.encode())
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def save_state(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor | np.ndarray], config: Mapping[str, Any], kind: str
) -> None:
    """Save named tensors (safetensors) with a JSON configuration and an integrity digest in the metadata.

    ``kind`` names what is stored (e.g. ``"checkpoint"``, ``"KNNCosineDetector"``) and is checked on load.
    """
    from safetensors.torch import save_file

    data = {}
    for key, value in tensors.items():
        t = torch.tensor(value) if isinstance(value, np.ndarray) else value  # a copy: inputs may be read-only
        data[key] = t.detach().cpu().contiguous()
    config_json = json.dumps(dict(config), default=_json_default)
    metadata = {
        _FORMAT_KEY: str(FORMAT_VERSION),
        "kind": kind,
        "config": config_json,
        _DIGEST_KEY: state_digest(data, kind, config_json),
    }
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=metadata)


def _read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a safetensors file; anything unreadable is a ValueError naming the file."""
    from safetensors import safe_open

    if not path.exists():
        raise FileNotFoundError(f"no file at {path}")
    if not path.is_file():
        raise ValueError(f"{path} is a directory, expected a conformood .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error type (and OSError) for every malformed file
        size = path.stat().st_size
        why = "it is empty" if size == 0 else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path} is not a readable safetensors file (corrupt, truncated or another format; "
                         f"{why})") from None
    return meta, tensors


def load_state(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load what :func:`save_state` wrote; returns ``(tensors, config)`` after checking the format version,
    the kind and the digest."""
    _, tensors, config = load_artefact(path, kind)
    return tensors, config


def load_artefact(
    path: str | os.PathLike, kind: str | None = None
) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`load_state` that also returns the stored kind: ``(kind, tensors, config)``, from one read."""
    path = Path(path)
    meta, tensors = _read_safetensors(path)
    version = meta.get(_FORMAT_KEY)
    if version is None:
        raise ValueError(f"{path} is a safetensors file but not one written by conformood")
    if not version.isdigit():
        raise ValueError(f"{path} has a malformed format version {version!r}")
    if int(version) > FORMAT_VERSION:
        raise ValueError(f"{path} has format version {version}; this conformood reads up to {FORMAT_VERSION}")
    if int(version) < 2 or _DIGEST_KEY not in meta:
        raise ValueError(f"{path} was written by conformood 0.2 or earlier and carries no integrity digest, so it "
                         "cannot be verified; re-create it with this version")
    stored_kind, config_json = meta.get("kind"), meta.get("config", "{}")
    if kind is not None and stored_kind != kind:
        raise ValueError(f"{path} holds a {stored_kind!r}, expected a {kind!r}")
    if state_digest(tensors, str(stored_kind), config_json) != meta[_DIGEST_KEY]:
        raise ValueError(f"{path} fails its integrity check: its tensors or settings changed after it was written "
                         "(corrupted or edited); refusing to load it")
    try:
        config = json.loads(config_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} has a malformed configuration: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} has a malformed configuration: expected a JSON object, got {type(config).__name__}")
    return str(stored_kind), tensors, config


def saved_kind(path: str | os.PathLike) -> str | None:
    """The ``kind`` recorded by :func:`save_state` in a file (None for other safetensors files)."""
    meta, _ = _read_safetensors(Path(path))
    return meta.get("kind")


def check_state_dict(
    expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], source: str
) -> None:
    """Refuse ``tensors`` unless they hold exactly the keys of ``expected`` with the same shapes; the error
    names the first mismatch (missing key, unexpected key or shape)."""
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ValueError(f"{source} lacks the weight {missing[0]!r} ({len(missing)} missing in all)")
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise ValueError(f"{source} has an unexpected weight {extra[0]!r} ({len(extra)} unexpected in all)")
    for key, ref in expected.items():
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise ValueError(f"{source}: weight {key!r} has shape {tuple(tensors[key].shape)}, the model expects "
                             f"{tuple(ref.shape)}")
        if tensors[key].dtype.is_floating_point != ref.dtype.is_floating_point:
            raise ValueError(f"{source}: weight {key!r} has dtype {tensors[key].dtype}, the model expects {ref.dtype}")


def load_module_state(
    factory: Callable[[], torch.nn.Module], tensors: Mapping[str, torch.Tensor], source: str
) -> torch.nn.Module:
    """Build ``factory()`` and load ``tensors`` into it, after checking every key and shape on a skeleton built
    on the meta device (no memory), so that stored settings cannot make it allocate what the file does not
    hold. Bad stored settings (the factory raising) are a ValueError naming ``source``."""
    try:
        with torch.device("meta"):
            skeleton = factory()
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{source} has invalid model settings: {exc}") from None
    check_state_dict(skeleton.state_dict(), tensors, source)
    module = factory()
    module.load_state_dict(dict(tensors))
    return module
