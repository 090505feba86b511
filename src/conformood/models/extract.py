"""``extract_features``: images in, a backbone's features out, the same way everywhere.

Input: a tensor or an ndarray of images ((n, c, h, w), or (n, h, w, c) / (n, h, w) arrays; uint8 in 0..255 or
floats in [0, 1]), a torch ``Dataset`` or a ``DataLoader`` whose items are ``x`` or ``(x, y, …)``. Each batch is
preprocessed by the backbone itself (resize and normalisation, :meth:`Backbone.preprocess`) and run through
:func:`conformood.models.encode` in evaluation mode without gradients, on ``cuda`` when available (with
autocast there) and in ``channels_last`` memory format where that is faster. Batches keep their order and
nothing is random, so the features are deterministic.

**Distributed.** Under ``torchrun`` (an initialised process group), each process extracts its own contiguous
block of the inputs and the blocks are reassembled in order; every rank returns all features, and only rank 0
writes the cache.

With ``cache=`` a folder, features of array inputs are stored there as safetensors (written atomically, with the
conformood digest), keyed by the weights digest, a digest of the image bytes and the preprocessing; a second
call with the same three reads them back instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from ..distributed import barrier, gather_shards, is_distributed, rank, shard_bounds
from .backbones import Backbone
from .features import encode

CACHE_KIND = "FeatureCache"


def as_images(x: Any) -> torch.Tensor:
    """The one image-layout conversion: a float tensor (n, c, h, w) in [0, 1] from an image batch of any
    supported layout and dtype."""
    if isinstance(x, np.ndarray):
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"images must be numeric, got dtype {x.dtype}")
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
            x = np.transpose(x, (0, 3, 1, 2))  # (n, h, w, c)
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"a batch of images must be a tensor or an ndarray, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"images must be (n, c, h, w), (n, h, w, c) or (n, h, w); got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.dtype.is_floating_point:
        raise ValueError(f"images must be uint8 (0..255) or floating point in [0, 1], got {x.dtype}")
    x = x.float()
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values")
    if x.numel() and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"floating-point images must lie in [0, 1], got values in [{x.min():.3g}, {x.max():.3g}]; "
                         "pass uint8 images or divide by 255")
    return x


def _batches(data: Any, batch_size: int) -> tuple[Iterator[torch.Tensor], int | None, int | None]:
    """This process's image batches in order, the number of images it gets, and the total (when known); under
    a process group each rank gets its block of :func:`shard_bounds`."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        start, stop = shard_bounds(len(data))
        return ((as_images(data[i : min(i + batch_size, stop)]) for i in range(start, stop, batch_size)),
                stop - start, len(data))
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            raise ValueError("the DataLoader shuffles (shuffle=True): features would not line up with the data; "
                             "pass a loader without shuffling")
        loader = data
        if is_distributed():  # the same loader settings over this rank's block of the data set
            start, stop = shard_bounds(len(data.dataset))  # type: ignore[arg-type]
            loader = DataLoader(Subset(data.dataset, range(start, stop)), batch_size=data.batch_size,
                                num_workers=data.num_workers, collate_fn=data.collate_fn)
    elif isinstance(data, Dataset):
        start, stop = shard_bounds(len(data))  # type: ignore[arg-type]
        loader = DataLoader(Subset(data, range(start, stop)) if is_distributed() else data, batch_size=batch_size,
                            shuffle=False)
    else:
        raise TypeError(f"data must be a tensor, an ndarray, a Dataset or a DataLoader, got {type(data).__name__}")

    def first(batch: Any) -> torch.Tensor:
        return as_images(batch[0] if isinstance(batch, (tuple, list)) else batch)

    try:
        local = len(loader.dataset)  # type: ignore[arg-type]
        total = len(data.dataset if isinstance(data, DataLoader) else data)  # type: ignore[arg-type]
    except TypeError:
        if is_distributed():
            raise ValueError("a data set without a length cannot be split across processes") from None
        local = total = None
    return (first(b) for b in loader), local, total


def data_digest(data: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of an image array's dtype, shape and bytes."""
    arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).data)
    return "sha256:" + h.hexdigest()


def _cache_path(folder: Path, backbone: Backbone, data: Any) -> Path | None:
    if not isinstance(data, (torch.Tensor, np.ndarray)) or backbone.weights_digest is None:
        return None  # no stable key: a loader's content, or random weights
    key = json.dumps({"backbone": backbone.name, "weights": backbone.weights_digest, "data": data_digest(data),
                      "preprocessing": backbone.preprocessing()}, sort_keys=True)
    return folder / f"features-{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"


def extract_features(backbone: Backbone, data: Any, batch_size: int = 128, device: str | torch.device | None = None,
                     progress: bool = True, cache: str | os.PathLike | None = None,
                     channels_last: bool | None = None) -> np.ndarray:
    """Features (n, feature_dim) float32 of every image in ``data``, in order (see the module docs); a backbone
    with ``output="patches"`` gives (n, n_patches, feature_dim)."""
    from ..io import load_state, save_state

    if not isinstance(backbone, Backbone):
        raise TypeError("backbone must be a Backbone (get_backbone(...) or backbone_from_module(...))")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    path = _cache_path(Path(cache), backbone, data) if cache is not None else None
    if path is not None and path.is_file():
        return load_state(path, kind=CACHE_KIND)[0]["features"].numpy()
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    module = backbone.module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    batches, n, total = _batches(data, batch_size)
    bar = None
    if progress and rank() == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"features ({backbone.name})", unit="img", leave=False)
    out = []
    try:
        for images in batches:
            x = backbone.preprocess(images.to(device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                feats = encode(module, x, batch_size=max(1, x.shape[0]), device=device)
            out.append(feats.float())
            if bar is not None:
                bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()
    features = torch.cat(out) if out else torch.zeros(0, backbone.feature_dim)
    if is_distributed():
        features = gather_shards(features.to(device), int(total)).cpu()  # type: ignore[arg-type]
    features = features.numpy()
    if not np.isfinite(features).all():
        raise ValueError(f"{backbone.name} produced non-finite features")
    if path is not None and rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_state(path, {"features": torch.from_numpy(features)},
                   {"backbone": backbone.name, "weights": backbone.weights_digest, "data": data_digest(data),
                    "preprocessing": backbone.preprocessing()}, kind=CACHE_KIND)
    barrier()
    return features
