"""Synthetic outliers beyond rotations, and outlier-exposure pools.

* :func:`cut_perm` — CutPerm of CSI (Tack et al. 2020), used by the OECL paper's self-OECL: the image is cut
  into 2×2 quadrants and the halves are swapped (4 shifts, index 0 = identity).
* :func:`cutpaste` — CutPaste (Li et al. 2021), one of FIRM's synthetic outliers (§4): a rectangular patch is
  cut, colour-jittered and pasted elsewhere in the same image.
* :func:`poisson_blend` / :func:`nsa_outliers` — NSA-style outliers (Schlüter et al. 2022), also in FIRM §4: a
  patch of *another* image is blended in seamlessly by Poisson image editing (Pérez et al. 2003). The Dirichlet
  problem on the patch rectangle is solved exactly with a type-I discrete sine transform.
* :class:`OutlierExposurePool` — draws outlier-exposure images from any array (e.g. the Tiny-ImageNet pool in
  ``../shared/data/tinyimagenet_oe_32.npz``), converted to the in-distribution image shape.

Every function takes a ``torch.Generator`` for reproducibility and never touches the global random state.
Images are float tensors (n, c, h, w) in [0, 1]; outputs stay in [0, 1] (blending clamps, and says so).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from numpy.typing import ArrayLike

from .._validation import check_images, check_positive_int

CUTPERM_SHIFTS = 4


def cut_perm(x: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """CutPerm shift k ∈ {0, 1, 2, 3}: bit 0 swaps the top and bottom halves, bit 1 the left and right halves.

    ``k`` may be one int for the whole batch or a tensor (n,) of per-image shifts. Even sides are required so
    that the halves are equal; every shift is its own inverse.
    """
    x = check_images(x, "x")
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"CutPerm needs even image sides, got {(h, w)}")
    ks = torch.as_tensor(k).long().reshape(-1)
    if ks.numel() == 1:
        ks = ks.expand(x.shape[0])
    if ks.shape[0] != x.shape[0] or bool(((ks < 0) | (ks >= CUTPERM_SHIFTS)).any()):
        raise ValueError(f"k must be in 0..3, one value or one per image, got {k}")
    out = x.clone()
    swap_v = (ks & 1).bool()
    swap_h = (ks & 2).bool()
    out[swap_v] = torch.roll(out[swap_v], shifts=h // 2, dims=-2)
    out[swap_h] = torch.roll(out[swap_h], shifts=w // 2, dims=-1)
    return out


def cut_perm_outliers(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One non-identity CutPerm shift per image, drawn uniformly from {1, 2, 3}; returns (outliers, k)."""
    x = check_images(x, "x")
    ks = torch.randint(1, CUTPERM_SHIFTS, (x.shape[0],), generator=generator)
    return cut_perm(x, ks), ks


def _box(h: int, w: int, area: tuple[float, float], aspect: tuple[float, float], g: torch.Generator) -> tuple[int, int]:
    a = float(torch.empty(()).uniform_(*area, generator=g)) * h * w
    log_r = torch.empty(()).uniform_(float(np.log(aspect[0])), float(np.log(aspect[1])), generator=g)
    r = float(torch.exp(log_r))
    ph = int(np.clip(round(np.sqrt(a * r)), 1, h - 1))
    pw = int(np.clip(round(np.sqrt(a / r)), 1, w - 1))
    return ph, pw


def _randint(high: int, g: torch.Generator) -> int:
    return int(torch.randint(0, max(1, high), (1,), generator=g))


def cutpaste(
    x: torch.Tensor,
    area: tuple[float, float] = (0.02, 0.15),
    aspect: tuple[float, float] = (0.3, 3.3),
    jitter: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste: per image, a patch of ``area`` × image area and aspect ratio in ``aspect`` (log-uniform) is cut,
    its brightness and contrast are jittered by ±``jitter``, and it is pasted at another random location.

    Returns (outliers, masks) with masks (n, h, w) bool marking the pasted region.
    """
    x = check_images(x, "x")
    if not (0 < area[0] <= area[1] < 1) or not (0 < aspect[0] <= aspect[1]) or jitter < 0:
        raise ValueError(f"invalid CutPaste parameters: area {area}, aspect {aspect}, jitter {jitter}")
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    n, c, h, w = x.shape
    out = x.clone()
    masks = torch.zeros((n, h, w), dtype=torch.bool)
    for i in range(n):
        ph, pw = _box(h, w, area, aspect, g)
        sy, sx = _randint(h - ph + 1, g), _randint(w - pw + 1, g)
        ty, tx = _randint(h - ph + 1, g), _randint(w - pw + 1, g)
        patch = x[i, :, sy : sy + ph, sx : sx + pw]
        gain = 1.0 + float(torch.empty(()).uniform_(-jitter, jitter, generator=g))
        bias = float(torch.empty(()).uniform_(-jitter, jitter, generator=g))
        patch = ((patch - patch.mean()) * gain + patch.mean() + bias).clamp(0.0, 1.0)
        out[i, :, ty : ty + ph, tx : tx + pw] = patch
        masks[i, ty : ty + ph, tx : tx + pw] = True
    return out, masks


def poisson_blend(target: torch.Tensor, source: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """Seamless cloning of ``source`` (c, ph, pw) into ``target`` (c, h, w) at (top, left), exactly.

    Inside the patch the result f solves the discrete Poisson equation Δf = Δsource (the source's gradients are
    imported) with f = target on the patch's one-pixel border (Dirichlet), Pérez et al. 2003 eq. 10 with
    v = ∇source. Writing f = source + u gives Δu = 0 inside and u = target − source on the border; the
    5-point Laplacian on the (ph − 2) × (pw − 2) interior is diagonalised by a type-I DST, so one forward and
    one inverse transform solve it. The result is clamped to [0, 1].
    """
    from scipy.fft import dstn, idstn

    if target.ndim != 3 or source.ndim != 3 or source.shape[0] != target.shape[0]:
        raise ValueError(
            f"need target (c, h, w) and source (c, ph, pw), got {tuple(target.shape)}, {tuple(source.shape)}"
        )
    c, ph, pw = source.shape
    h, w = target.shape[-2:]
    if ph < 3 or pw < 3 or top < 0 or left < 0 or top + ph > h or left + pw > w:
        raise ValueError(f"patch {ph}x{pw} at ({top}, {left}) must be at least 3x3 and inside the {h}x{w} image")
    tgt = target.detach().cpu().double().numpy()
    src = source.detach().cpu().double().numpy()
    region = tgt[:, top : top + ph, left : left + pw]
    d = region - src  # u on the border
    m, n = ph - 2, pw - 2
    # Right-hand side of  -Δu = 0  on the interior with the known border values moved over.
    rhs = np.zeros((c, m, n))
    rhs[:, 0, :] += d[:, 0, 1:-1]
    rhs[:, -1, :] += d[:, -1, 1:-1]
    rhs[:, :, 0] += d[:, 1:-1, 0]
    rhs[:, :, -1] += d[:, 1:-1, -1]
    ky = np.arange(1, m + 1)[:, None]
    kx = np.arange(1, n + 1)[None, :]
    eig = 4.0 - 2.0 * np.cos(np.pi * ky / (m + 1)) - 2.0 * np.cos(np.pi * kx / (n + 1))
    u = idstn(dstn(rhs, type=1, axes=(1, 2)) / eig, type=1, axes=(1, 2))
    blended = src.copy()
    blended[:, 1:-1, 1:-1] += u
    blended[:, 0, :], blended[:, -1, :] = region[:, 0, :], region[:, -1, :]
    blended[:, :, 0], blended[:, :, -1] = region[:, :, 0], region[:, :, -1]
    out = target.detach().clone()
    out[:, top : top + ph, left : left + pw] = torch.from_numpy(np.clip(blended, 0.0, 1.0)).to(target.dtype)
    return out


def nsa_outliers(
    x: torch.Tensor,
    area: tuple[float, float] = (0.05, 0.25),
    aspect: tuple[float, float] = (0.3, 3.3),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NSA-style outliers: a patch of another image of the batch, Poisson-blended at a random location.

    Returns (outliers, masks) with masks (n, h, w) bool marking the blended rectangle. Needs n ≥ 2.
    """
    x = check_images(x, "x")
    n, _, h, w = x.shape
    if n < 2:
        raise ValueError("NSA outliers take their patches from other images: need at least 2 images")
    if h < 4 or w < 4:
        raise ValueError(f"images are too small for blending: {(h, w)}")
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
    out = x.clone()
    masks = torch.zeros((n, h, w), dtype=torch.bool)
    for i in range(n):
        j = (i + 1 + _randint(n - 1, g)) % n  # any other image
        ph, pw = _box(h, w, area, aspect, g)
        ph, pw = max(ph, 3), max(pw, 3)
        sy, sx = _randint(h - ph + 1, g), _randint(w - pw + 1, g)
        ty, tx = _randint(h - ph + 1, g), _randint(w - pw + 1, g)
        out[i] = poisson_blend(x[i], x[j, :, sy : sy + ph, sx : sx + pw], ty, tx)
        masks[i, ty : ty + ph, tx : tx + pw] = True
    return out, masks


class OutlierExposurePool:
    """Outlier-exposure images drawn from a fixed pool, converted to the in-distribution shape (c, h, w).

    ``images``: uint8 (n, h, w, 3) / (n, c, h, w) arrays or float tensors in [0, 1]; gray ↔ RGB and
    bilinear resizing as in :func:`conformood.data.conform_images`.
    """

    def __init__(self, images: ArrayLike, shape: tuple[int, int, int]) -> None:
        from ..data.arrays import ImageArrays
        from ..data.named import conform_images

        arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if arr.ndim < 3 or arr.shape[0] == 0:
            raise ValueError(f"an outlier pool needs a non-empty image array, got shape {arr.shape}")
        data = ImageArrays.from_arrays(arr, np.zeros(arr.shape[0], dtype=np.int64), ["outlier"])
        self.images = torch.from_numpy(conform_images(data, tuple(shape)).images)
        self.shape = tuple(shape)

    @classmethod
    def from_npz(cls, path: str | os.PathLike, shape: tuple[int, int, int], key: str = "x") -> OutlierExposurePool:
        from ..io import read_npz

        return cls(read_npz(path, (key,), "outlier pool")[key], shape)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` pool images drawn uniformly with replacement."""
        n = check_positive_int(n, "n")
        idx = torch.randint(0, len(self), (n,), generator=generator)
        return self.images[idx]
