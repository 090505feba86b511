"""Shifting transformations used as synthetic outliers: rotations by 90, 180 and 270 degrees."""

from __future__ import annotations

import torch

from .._validation import check_images

ROTATION_ANGLES = (90, 180, 270)


def rotate(x: torch.Tensor, angle: int) -> torch.Tensor:
    """Rotate images (n, c, h, w) counter-clockwise by a multiple of 90 degrees."""
    if angle % 90 != 0:
        raise ValueError(f"angle must be a multiple of 90 degrees, got {angle}")
    return torch.rot90(x, k=(angle // 90) % 4, dims=(-2, -1))


def rotation_outliers(
    x: torch.Tensor,
    angles: tuple[int, ...] = ROTATION_ANGLES,
    per_sample: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic outliers Omega_gamma(x), gamma in ``angles`` (FIRM paper section 2.1).

    With ``per_sample`` each image is rotated by one angle drawn uniformly from ``angles`` (n outputs);
    otherwise every image is rotated by every angle (n * len(angles) outputs, angle-major).
    Square images are required so that rotated images keep their shape.

    Returns ``(outliers, angle_index)`` where ``angle_index[j]`` indexes ``angles``.
    """
    x = check_images(x, "x")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotations need square images, got {tuple(x.shape[-2:])}")
    if not angles or any(a % 360 == 0 or a % 90 != 0 for a in angles):
        raise ValueError(f"angles must be non-zero multiples of 90 degrees, got {angles}")
    if not per_sample:
        outs = [rotate(x, a) for a in angles]
        idx = torch.arange(len(angles)).repeat_interleave(x.shape[0])
        return torch.cat(outs), idx
    idx = torch.randint(0, len(angles), (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for j, a in enumerate(angles):
        sel = idx == j
        if sel.any():
            out[sel] = rotate(x[sel], a)
    return out, idx
