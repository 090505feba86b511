"""Batched SimCLR views with kornia: every sample gets its own random parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .._validation import check_images
from .rng import seeded_from


@dataclass(frozen=True)
class ViewConfig:
    """Parameters of the SimCLR augmentation (Chen et al. 2020, appendix A).

    ``crop_scale``: area range of the random resized crop; ``flip_p``: horizontal-flip probability
    (set 0 for data whose meaning a mirror changes, such as digits); ``jitter``: colour-jitter strengths
    (brightness, contrast, saturation, hue) applied with probability ``jitter_p``; ``grayscale_p``:
    probability of converting an RGB view to gray. On 1-channel inputs only brightness and contrast
    apply and grayscale is skipped.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        for name in ("flip_p", "jitter_p", "grayscale_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {p}")
        if len(self.jitter) != 4 or any(j < 0 for j in self.jitter):
            raise ValueError(f"jitter must be four non-negative strengths, got {self.jitter}")

    def to_dict(self) -> dict:
        return asdict(self)


def random_hflip(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image (n, c, h, w) left-right with probability ``p``, independently per image."""
    if p <= 0.0:
        return x
    draw = torch.rand(x.shape[0], generator=generator, device=generator.device if generator is not None else "cpu")
    mirror = (draw < p).to(x.device)[:, None, None, None]
    return torch.where(mirror, x.flip(-1), x)


class SimCLRViews(nn.Module):
    """Random resized crop, horizontal flip, colour jitter and grayscale, batched on tensors.

    ``views(x, generator)`` returns one augmented view of a float batch (n, c, h, w) in [0, 1] with
    per-sample random parameters; call it twice for a positive pair. The output keeps the input's size.
    """

    def __init__(self, image_size: tuple[int, int], config: ViewConfig | None = None) -> None:
        super().__init__()
        import kornia.augmentation as K

        self.config = config or ViewConfig()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        c = self.config
        b, ct, s, h = c.jitter
        crop = K.RandomResizedCrop(self.image_size, scale=c.crop_scale, ratio=c.crop_ratio)
        flip = K.RandomHorizontalFlip(p=c.flip_p)
        self._rgb = nn.Sequential(
            crop, flip, K.ColorJitter(b, ct, s, h, p=c.jitter_p), K.RandomGrayscale(p=c.grayscale_p)
        )
        self._gray = nn.Sequential(crop, flip, K.ColorJitter(b, ct, 0.0, 0.0, p=c.jitter_p))

    def without_flip(self) -> SimCLRViews:
        """The same augmentation without the horizontal flip (for objectives that flip before shifting)."""
        return SimCLRViews(self.image_size, replace(self.config, flip_p=0.0))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = check_images(x, "x")
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"x has spatial size {tuple(x.shape[-2:])}, these views were built for {self.image_size}")
        pipeline = self._rgb if x.shape[1] == 3 else self._gray
        with seeded_from(generator):
            out = pipeline(x)
        return out.clamp_(0.0, 1.0)
