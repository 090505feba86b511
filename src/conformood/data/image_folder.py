"""Image folders ``[split/]class/*.{jpg,png}`` read from a directory or a ``.tar`` / ``.tar.gz`` archive.

Decoded arrays are cached as ``.npz`` (no pickle) keyed by the source's path, size and modification time,
so the second read of a 60,000-image archive takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import io as _io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_path
from .arrays import ImageArrays

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_CACHE_VERSION = 3  # 2: file names, class indices shared by every split; 3: the skipped files


def default_cache_dir() -> Path:
    """``$CONFORMOOD_CACHE`` or ``~/.cache/conformood``."""
    env = os.environ.get("CONFORMOOD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "conformood"


def _is_archive(path: Path) -> bool:
    return path.is_file() and (path.name.endswith((".tar", ".tar.gz", ".tgz")))


def _select(parts: tuple[str, ...], split: str | None) -> str | None:
    """The class name of an image path's parts, or None when the image is outside ``split``."""
    if len(parts) < 2 or parts[-1].startswith(".") or not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
        return None
    if split is None:
        return parts[-2]
    if len(parts) < 3 or parts[-3] != split:
        return None
    return parts[-2]


def list_image_folder(root: str | os.PathLike, split: str | None = None) -> tuple[list[tuple[str, Path]], list[str]]:
    """The image files of a folder ``[split/]class/*`` without reading them: ``(class, path)`` in the order
    :func:`load_image_folder` reads them (class folder, then file name), and the sorted class names (of every
    split; without a split, of the folders holding images): an image's label is its class's index there."""
    root = Path(root)
    base = root / split if split is not None else root
    if not base.is_dir():
        raise ValueError(f"no folder {base}: expected images under {root}/{split or ''}<class>/*.jpg")
    files = [(class_dir.name, f) for class_dir in sorted(p for p in base.iterdir() if p.is_dir())
             for f in sorted(class_dir.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    classes = {cls for cls, _ in files}
    if split is not None:  # every split's class folders, so that a class has one index in all of them
        classes.update(c.name for s in root.iterdir() if s.is_dir() for c in s.iterdir() if c.is_dir())
    return files, sorted(classes)


def _iter_directory(root: Path, split: str | None, classes: set[str]) -> Iterator[tuple[str, str, bytes]]:
    files, names = list_image_folder(root, split)
    if split is not None:
        classes.update(names)
    for cls, f in files:
        yield cls, f.name, f.read_bytes()


def _iter_archive(path: Path, split: str | None, classes: set[str]) -> Iterator[tuple[str, str, bytes]]:
    with tarfile.open(path, mode="r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = tuple(Path(member.name).parts)
            if split is not None and _select(parts, parts[-3] if len(parts) >= 3 else None) is not None:
                classes.add(parts[-2])  # the classes of every split
            cls = _select(parts, split)
            if cls is None:
                continue
            fh = tar.extractfile(member)
            if fh is not None:
                yield cls, Path(member.name).name, fh.read()


def decode_image(raw: bytes, mode: str = "RGB", size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (c, h, w) in ``mode``. Any bit depth is scaled to 0..255 (16-bit: / 257, not clipped to white);
    palette images are expanded; an alpha channel is dropped."""
    from PIL import Image

    with Image.open(_io.BytesIO(raw)) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16- and 32-bit gray: scale, never clip
            wide = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and wide.max(initial=0) <= 65535) \
                else max(float(wide.max(initial=0)), 1.0)
            img = Image.fromarray(np.clip(np.rint(wide / top * 255.0), 0, 255).astype(np.uint8), "L")
        img = img.convert(mode)
        if size is not None and img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1)


def unreadable(raw: bytes, exc: BaseException) -> str:
    """Why a file is not an image, as every reader says it: "an empty file" or "not a readable image (…)"."""
    return "an empty file" if not raw else f"not a readable image ({type(exc).__name__}: {exc})"


def encoder_input(image: np.ndarray, size: tuple[int, int]) -> Any:
    """One uint8 image (c, h, w) as a backbone's preprocessing brings it to ``size``: float [0, 1], resized
    bilinearly (antialiased when shrinking). The reading of images of mixed sizes, here and on the Ray workers."""
    import torch

    from .arrays import resize_bilinear

    return resize_bilinear(torch.from_numpy(image[None].astype(np.float32) / 255.0), size)[0]


def _cache_key(path: Path, split: str | None, mode: str, size: tuple[int, int] | None,
               mixed: tuple[int, int] | None = None) -> str:
    st = path.stat()
    ident = f"{_CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{split}|{mode}|{size}"
    ident += f"|{mixed}" if mixed is not None else ""
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def load_image_folder(
    path: str | os.PathLike,
    split: str | None = None,
    mode: str = "RGB",
    image_size: tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = False,
    mixed_sizes_to: tuple[int, int] | None = None,
    skip_bad: bool = False,
) -> ImageArrays:
    """Read ``[split/]class/*.{jpg,png}`` images from a folder or a tar archive.

    Parameters
    ----------
    path : folder or ``.tar`` / ``.tar.gz`` / ``.tgz`` file. In an archive, leading folders before
        ``split/`` are allowed (``cifar10/train/cat/0001.jpg``).
    split : sub-folder to read (``"train"``, ``"test"``), or None when the classes sit directly under ``path``.
    mode : PIL mode, ``"RGB"`` (3 channels) or ``"L"`` (1 channel).
    image_size : (height, width) to resize every image to (PIL bilinear); without it every image must have the
        same size, unless ``mixed_sizes_to`` = (height, width): then, where sizes differ, each image is resized
        to it as a backbone's preprocessing resizes (bilinear, antialiased when shrinking; images already at that
        size are kept as they are).
    skip_bad : leave out files that cannot be read as images, and list them (``class/file: why``) in the result's
        ``skipped``; by default the first such file is an error that names it.
    cache_dir : where decoded arrays are cached (default :func:`default_cache_dir`); ``use_cache=False``
        neither reads nor writes the cache.

    Returns
    -------
    :class:`ImageArrays` with uint8 images (n, c, h, w), sorted by class folder, then file name; labels index
    the sorted class-folder names of *every* split (a class has the same index in ``train/`` and ``test/``, also
    when one split lacks it), and ``names`` gives each image's ``class/file``.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"no image folder or archive at {src}")
    if not (src.is_dir() or _is_archive(src)):
        raise ValueError(f"{src} is neither a folder nor a .tar/.tar.gz/.tgz archive")
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))

    cache_file = None
    if use_cache and _is_archive(src):
        key = _cache_key(src, split, mode, size, mixed_sizes_to) + ("-skip" if skip_bad else "")
        cache_file = Path(cache_dir or default_cache_dir()) / f"imagefolder-{key}.npz"
        if cache_file.is_file():
            try:
                with np.load(cache_file, allow_pickle=False) as z:
                    return ImageArrays(z["images"], z["labels"], [str(c) for c in z["class_names"]],
                                       [str(c) for c in z["names"]], [str(c) for c in z["skipped"]])
            except (OSError, ValueError, KeyError, EOFError):  # a damaged or foreign cache file: read the source
                pass

    all_classes: set[str] = set()
    items = _iter_archive(src, split, all_classes) if _is_archive(src) else _iter_directory(src, split, all_classes)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"decoding {src.name}", unit="img")
    records: list[tuple[str, str, np.ndarray]] = []
    skipped: list[str] = []
    for cls, name, raw in items:
        try:
            records.append((cls, name, decode_image(raw, mode, size)))
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; each is one clear error naming the file
            kind = unreadable(raw, exc)
            if not skip_bad:
                raise ValueError(f"{src}: {cls}/{name} is {kind} (--skip-bad leaves such files out and lists "
                                 "them)") from None
            skipped.append(f"{cls}/{name}: {kind}")
    if not records:
        where = f"{src}/{split}" if split else str(src)
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {where}/<class>/")
    records.sort(key=lambda r: (r[0], r[1]))
    shapes = {r[2].shape for r in records}
    if len(shapes) > 1 and mixed_sizes_to is not None:  # each resized as a backbone's preprocessing would, in
        # float [0, 1], so that the encoder's own resize is then a no-op
        records = [(c, n, encoder_input(a, mixed_sizes_to).numpy()) for c, n, a in records]
        shapes = {r[2].shape for r in records}
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes ({', '.join(f'{s[2]}x{s[1]}' for s in sorted(shapes)[:3])}"
                         f"{', ...' if len(shapes) > 3 else ''}); read them for an encoder (--input-size gives "
                         "the size) or pass image_size=(h, w)")
    class_names = sorted(all_classes | {r[0] for r in records})
    lookup = {c: i for i, c in enumerate(class_names)}
    images = np.stack([r[2] for r in records])
    labels = np.array([lookup[r[0]] for r in records], dtype=np.int64)
    names = [f"{r[0]}/{r[1]}" for r in records]
    result = ImageArrays(images, labels, class_names, names, sorted(skipped))

    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=images, labels=labels, class_names=np.array(class_names), names=np.array(names),
                         skipped=np.array(sorted(skipped), dtype=str))
    return result
