"""Plain folders of image files, any sizes, in any sub-folders: what an inspection station writes.

:func:`read_image_files` walks a folder (or a ``.tar``/``.tar.gz`` archive) recursively and returns every image
file (PNG, JPEG, BMP, TIFF, WebP; 8- or 16-bit, gray, palette or colour) as float (c, h, w) in [0, 1] at its own
size, named by its path relative to the folder. Unlike :func:`~conformood.data.load_image_folder` there are no
classes: every file is one part to judge.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .image_folder import IMAGE_EXTENSIONS, _is_archive, decode_image


@dataclass
class ImageFiles:
    """Images of a folder: ``images[i]`` float32 (c, h, w) in [0, 1] (c = 1 for gray files, 3 for colour),
    ``names[i]`` its path relative to the folder (``/``-separated), ``sizes[i]`` its own (height, width);
    ``skipped``: the files left out on request, each ``name: why``."""

    images: list[np.ndarray]
    names: list[str]
    sizes: list[tuple[int, int]]
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files without an image extension (named, never read)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int]) -> ImageFiles:
        """The images at ``indices``, in that order (the folder's skipped and ignored files stay with the folder)."""
        return ImageFiles([self.images[i] for i in indices], [self.names[i] for i in indices],
                          [self.sizes[i] for i in indices])

    def digest(self) -> str:
        """SHA-256 over every image's name, shape and pixels, in order: what was read, whatever the files."""
        import hashlib

        h = hashlib.sha256()
        for name, x in zip(self.names, self.images):
            h.update(f"{name}|{x.shape}|".encode())
            h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        return "sha256:" + h.hexdigest()


def _is_image_name(parts: tuple[str, ...]) -> bool:
    return bool(parts) and not any(p.startswith(".") for p in parts) and parts[-1].lower().endswith(IMAGE_EXTENSIONS)


def _walk(src: Path, ignored: list[str]) -> Iterator[tuple[str, Callable[[], bytes]]]:
    if _is_archive(src):
        with tarfile.open(src, mode="r:*") as tar:
            files = [m for m in tar if m.isfile() and not any(p.startswith(".") for p in Path(m.name).parts)]
            ignored.extend(sorted(m.name for m in files if not _is_image_name(Path(m.name).parts)))
            members = sorted((m for m in files if _is_image_name(Path(m.name).parts)), key=lambda m: m.name)
            for m in members:
                fh = tar.extractfile(m)
                yield m.name, (lambda fh=fh: fh.read() if fh is not None else b"")
        return
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            path = Path(root) / f
            rel = path.relative_to(src)
            if _is_image_name(rel.parts):
                yield rel.as_posix(), path.read_bytes
            elif not f.startswith("."):
                ignored.append(rel.as_posix())


def _native_mode(raw: bytes) -> str:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        return "L" if img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else "RGB"


def read_image_files(path: str | os.PathLike, size: tuple[int, int] | None = None, skip_bad: bool = False,
                     progress: bool = False) -> ImageFiles:
    """Every image file under ``path`` (recursively; hidden files and folders left out), sorted by relative
    path; files of other kinds are listed in ``ignored``. With ``size`` = (height, width) each is resized to it as
    a backbone's preprocessing resizes (bilinear, antialiased when shrinking), one at a time, so that a folder of
    large images never sits in memory at its own size. A file that cannot be read is an error naming it, or with
    ``skip_bad`` is left out and listed in ``skipped``; an empty folder is an error."""
    import torch

    from .arrays import resize_bilinear

    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"no image folder or archive at {src}")
    if not (src.is_dir() or _is_archive(src)):
        raise ValueError(f"{src} is neither a folder nor a .tar/.tar.gz/.tgz archive")
    ignored: list[str] = []
    items: Iterator[tuple[str, Callable[[], bytes]]] = _walk(src, ignored)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"reading {src.name}", unit="img", leave=False)
    images, names, sizes, skipped = [], [], [], []
    for name, read in items:
        raw = read()
        try:
            arr = decode_image(raw, _native_mode(raw), None)
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds; each is one clear error naming the file
            kind = "an empty file" if not raw else f"not a readable image ({type(exc).__name__}: {exc})"
            if not skip_bad:
                raise ValueError(f"{src}: {name} is {kind} (--skip-bad leaves such files out and lists them)"
                                 ) from None
            skipped.append(f"{name}: {kind}")
            continue
        x = arr.astype(np.float32) / 255.0
        sizes.append((int(x.shape[1]), int(x.shape[2])))
        if size is not None and x.shape[1:] != tuple(size):
            x = resize_bilinear(torch.from_numpy(x[None]), tuple(size))[0].numpy()
        images.append(x)
        names.append(name)
    if not images:
        extra = f" ({len(skipped)} unreadable file(s) left out)" if skipped else \
            f" (only {len(ignored)} file(s) of other kinds, e.g. {ignored[0]})" if ignored else ""
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {src}{extra}")
    return ImageFiles(images, names, sizes, skipped, ignored)


def stack_images(images: list[np.ndarray]) -> np.ndarray:
    """One float array (n, c, h, w) of images of one size; gray ones repeated to 3 channels when the list mixes
    gray and colour."""
    shapes = {x.shape[1:] for x in images}
    if len(shapes) != 1:
        raise ValueError(f"images of different sizes ({sorted(shapes)[:3]}) cannot be stacked; read them with size=")
    channels = max(x.shape[0] for x in images)
    return np.stack([np.repeat(x, channels, axis=0) if x.shape[0] != channels else x for x in images])
