"""The settings of an inspector and how part images of any size become its model input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_alpha, check_positive_float, check_positive_int
from ..conformal.detection.ensemble import RULES
from ..data.image_files import ImageFiles, stack_images

RESIZES = ("stretch", "pad")
#: flips of the fitting images whose patches join the memory bank (never the calibration images)
AUGMENTS = ("hflip", "vflip")
#: the local (patch) detector: PatchCore's nearest-patch distances, or one Gaussian of all good patches
LOCALS = ("patchcore", "gaussian")
IMAGE_SCORES = ("worst_patch", "map_peak")
GAUSSIAN_STAGE = 3  # the gaussian's default stage: 3 units (stride 4), the inspection demo's


@dataclass
class InspectConfig:
    """Settings of :meth:`Inspector.fit` (see the module docs). ``input_size`` None: the backbone's own
    (224 for MobileNetV2 and EfficientNet-Lite0, 240 and 260 for Lite1 and Lite2). ``patch_stages`` None: the
    two stages the backbone names for PatchCore (strides 8 and 16); earlier ones see smaller defects. ``patch_dim``
    None: the two stages' channels side by side (anomalib's embedding), else pooled to that width (the paper's
    reduction). Features up to 256 wide enter the coreset as they are, wider ones through a 128-d random
    projection. ``augment``: flips of the fitting images ("hflip", "vflip") whose patches join the memory bank,
    for parts whose good appearance is the same mirrored; calibration images are never flipped or fitted.
    ``local``: "patchcore" (nearest good patch; parts whose good patches differ from place to place) or
    "gaussian" (:class:`~conformood.scores.PatchGaussianDetector`, one Gaussian of every good patch, on one early
    stage at a quarter of the input resolution; uniform textures, where a defect may be a few pixels of noise:
    the textile demo).
    ``image_score``: "worst_patch" (PatchCore's reweighted worst patch, its eq. 7; the patch Gaussian's largest
    distance) or "map_peak" (the peak of the anomaly map, the patch distances upsampled and smoothed with a Gaussian
    of ``map_sigma`` pixels: a lone outlying patch counts less than a defect that spans several). ``map_sigma``: the
    maps' smoothing (PatchCore: 4). On magnetic tiles at 256² (whole memory bank) the peak with σ = 8 gave mean image
    AUROC 0.960 and pixel AUROC 0.952 against 0.949 and 0.950 for the worst patch with σ = 4
    (``benchmarks/inspect_magnetic_tiles_sweep.py``); the defaults stay the paper's.
    ``border``: rings of the patch grid left out of the image score (:class:`~conformood.scores.PatchCoreDetector`;
    0 by default, since the counted zero padding already keeps the part's edge from dominating, and a defect at the
    edge must not go unseen). ``resize`` "pad" keeps the aspect ratio (magnetic tiles: mean image AUROC 0.935,
    crack 0.920, PRO 0.823, against 0.930, 0.872 and 0.762 stretched, with 30 % to calibrate).
    ``calibration_fraction`` 0.2: more good parts fitted (magnetic tiles, 440 fitted and 110 to calibrate: mean
    0.946 against 0.935 with 385 and 165; the false-alarm rate holds either way). The defaults were chosen on
    magnetic tiles (``benchmarks/inspect_magnetic_tiles.py``)."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    input_size: int | None = None
    resize: str = "pad"
    patch_stages: tuple[int, int] | None = None
    patch_dim: int | None = None
    coreset_fraction: float = 0.1
    border: int = 0
    pooled: bool = False
    rule: str = "fisher"
    calibration_fraction: float = 0.2
    alpha: float = 0.1
    delta: float | None = None
    seed: int = 0
    batch_size: int = 16
    augment: tuple[str, ...] = ()
    local: str = "patchcore"
    image_score: str = "worst_patch"
    map_sigma: float = 4.0

    def __post_init__(self) -> None:
        from ..models import BACKBONES

        BACKBONES.info(self.backbone)  # a clear error naming the known backbones
        if self.input_size is not None:
            check_positive_int(self.input_size, "input_size", minimum=32)
        if self.resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.patch_dim is not None:
            check_positive_int(self.patch_dim, "patch_dim")
        fraction = check_positive_float(self.coreset_fraction, "coreset_fraction")
        if fraction > 1:
            raise ValueError(f"coreset_fraction must lie in (0, 1], got {self.coreset_fraction}")
        check_positive_int(self.border, "border", minimum=0)
        if not isinstance(self.pooled, bool):
            raise ValueError(f"pooled must be True or False, got {self.pooled!r}")
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        cf = check_positive_float(self.calibration_fraction, "calibration_fraction")
        if cf >= 1:
            raise ValueError(f"calibration_fraction must lie in (0, 1), got {self.calibration_fraction}")
        self.alpha = check_alpha(self.alpha)
        if self.delta is not None:
            self.delta = check_alpha(self.delta, "delta")
        check_positive_int(self.seed, "seed", minimum=0)
        check_positive_int(self.batch_size, "batch_size")
        if isinstance(self.augment, str) or not isinstance(self.augment, (tuple, list)) or any(
                a not in AUGMENTS for a in self.augment) or len(set(self.augment)) != len(self.augment):
            raise ValueError(f"augment must be distinct names among {', '.join(AUGMENTS)}, got {self.augment!r}")
        self.augment = tuple(self.augment)
        if self.local not in LOCALS:
            raise ValueError(f"local must be one of {', '.join(LOCALS)}, got {self.local!r}")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {self.image_score!r}")
        self.map_sigma = check_positive_float(self.map_sigma, "map_sigma")
        if self.patch_stages is not None:
            stages = self.patch_stages
            count = 2 if self.local == "patchcore" else 1
            if not isinstance(stages, (tuple, list)) or len(stages) != count or any(
                    isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in stages) or (
                    count == 2 and not stages[0] < stages[1]):
                what = "two unit counts 1 <= a < b" if count == 2 else "one unit count >= 1 (the gaussian's stage)"
                raise ValueError(f"patch_stages must be {what}, got {stages!r}")
            self.patch_stages = tuple(int(v) for v in stages)

    @property
    def stages(self) -> tuple[int, ...]:
        """The stages the local detector reads: ``patch_stages``, else PatchCore's two (the backbone's own) or the
        gaussian's one (:data:`GAUSSIAN_STAGE`)."""
        from ..models import BACKBONES

        if self.patch_stages:
            return tuple(self.patch_stages)
        if self.local == "gaussian":
            return (GAUSSIAN_STAGE,)
        return tuple(BACKBONES.info(self.backbone).extra["patch_stages"])

    @property
    def size(self) -> int:
        from ..models import BACKBONES

        if self.input_size is not None:
            return int(self.input_size)
        import inspect

        default = inspect.signature(BACKBONES.get(self.backbone)).parameters["input_size"].default
        return int(default)


def fit_input(images: ImageFiles | list[np.ndarray], size: int, resize: str) -> np.ndarray:
    """Images of any sizes as one float array (n, c, size, size): stretched to the square, or (``"pad"``) the long
    side brought to ``size`` and the short side padded by repeating its edge."""
    import torch

    from ..data.arrays import resize_bilinear

    items = images.images if isinstance(images, ImageFiles) else images
    out = []
    for x in items:
        h, w = x.shape[1:]
        if resize == "stretch" or h == w:
            out.append(x if (h, w) == (size, size) else resize_bilinear(torch.from_numpy(x[None]), (size, size))[0]
                       .numpy())
            continue
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        y = resize_bilinear(torch.from_numpy(x[None]), (nh, nw))[0].numpy()
        top, left = (size - nh) // 2, (size - nw) // 2
        out.append(np.pad(y, ((0, 0), (top, size - nh - top), (left, size - nw - left)), mode="edge"))
    return stack_images(out)


def content_box(size: tuple[int, int], input_size: int, resize: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an image of its own ``size`` inside the model input: the whole input when
    stretched, the unpadded part when padded."""
    h, w = size
    if resize == "stretch" or h == w:
        return 0, 0, input_size, input_size
    scale = input_size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return (input_size - nh) // 2, (input_size - nw) // 2, nh, nw
