"""Defect regions with a stated miss rate, drawn from an inspector's anomaly maps (conformal risk control).

:class:`Regions` is what ``conformood inspect fit --defects DIR --masks DIR --pixel-alpha A`` adds to an
inspector. It is calibrated on defective images with pixel masks, on the anomaly maps at each image's own size
(mapped to u = s / (s + c) with c the inspector's map scale, see :mod:`~conformood.conformal.risk.anomaly_maps`):

- ``crc``: one threshold for every image, the exact CRC threshold (COAT eq. 5);
- ``at`` / ``coat``: a threshold per image from a predictor f_D that sees the image and its map (COAT eq. 8 /
  Algorithm 1, trained by the one trainer on ``train_fraction`` of the defective images), corrected on the rest
  by the exact AT/COAT correction (Algorithm 1 lines 15–17);
- ``ltt``: one threshold that holds both the miss rate on defective parts (≤ ``pixel_alpha``) and the flagged area
  on good parts (≤ ``area_alpha``) with probability ≥ 1 − ``delta`` (Learn-then-Test), on the inspector's good
  calibration images. Its grid of thresholds is fixed in u, and u's scale c is a quantile of those same good
  images: one scalar that LTT's statement takes as given (the regions benchmark tests the area on other good parts).

The guarantee of crc/at/coat: over defective parts exchangeable with the calibration ones, the expected fraction of
a part's defect pixels that its region misses is ≤ ``pixel_alpha``. It says nothing of one part: a region may
miss more of one defect and less of another.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .._validation import check_alpha, check_positive_float, check_positive_int
from ..conformal.risk.anomaly_maps import (
    defect_values,
    ltt_region_threshold,
    region_adaptive_correction,
    region_crc_threshold,
    unit_maps,
)
from ..data.image_files import ImageFiles, read_image_files
from .inspect_config import content_box, fit_input

METHODS = ("crc", "at", "coat", "ltt")
PREDICTORS = ("small", "mobilenet_v2")


@dataclass
class RegionConfig:
    """Settings of :meth:`Regions.fit` (see the module docs). ``area_alpha`` and ``delta``: LTT's level of the
    mean flagged area on good parts and its error probability (LTT only). ``train_fraction``: the defective images
    that train AT/COAT's threshold predictor (the rest calibrate; the paper splits equally). ``epochs``: the
    predictor's (default 30 for AT, 60 for COAT, as in the paper)."""

    method: str = "crc"
    pixel_alpha: float = 0.1
    area_alpha: float | None = None
    delta: float | None = None
    train_fraction: float = 0.5
    predictor: str = "small"
    epochs: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"the region method must be one of {', '.join(METHODS)}, got {self.method!r}")
        self.pixel_alpha = check_alpha(self.pixel_alpha, "pixel_alpha")
        if self.method == "ltt":
            if self.area_alpha is None or self.delta is None:
                raise ValueError("ltt needs area_alpha (the good-part area level) and delta")
            self.area_alpha = check_alpha(self.area_alpha, "area_alpha")
            self.delta = check_alpha(self.delta, "delta")
        elif self.area_alpha is not None or self.delta is not None:
            raise ValueError(f"area_alpha and delta belong to ltt, not {self.method}")
        fraction = check_positive_float(self.train_fraction, "train_fraction")
        if fraction >= 1:
            raise ValueError(f"train_fraction must lie in (0, 1), got {self.train_fraction}")
        if self.predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {', '.join(PREDICTORS)}, got {self.predictor!r}")
        if self.epochs is not None:
            check_positive_int(self.epochs, "epochs")
        check_positive_int(self.seed, "seed", minimum=0)


MASK_SUFFIXES = ("", "_mask")  # a mask of a.jpg is a.<any image extension> or a_mask.<any image extension>


def read_defects(images: str | os.PathLike | ImageFiles, masks: str | os.PathLike | ImageFiles,
                 progress: bool = False) -> tuple[ImageFiles, list[np.ndarray]]:
    """Defective images and their masks, matched by name: the mask of ``sub/a.jpg`` is ``sub/a.<ext>`` or
    ``sub/a_mask.<ext>`` under the mask folder (any image format; a pixel is defect where the mask is above half its
    range, or, in a mask whose values all lie below that, such as a label mask of 0 and 1, where it is not 0). A
    missing mask, a mask without an image, a mask of another size or an empty mask is an error."""
    files = images if isinstance(images, ImageFiles) else read_image_files(images, progress=progress)
    mask_files = masks if isinstance(masks, ImageFiles) else read_image_files(masks, progress=progress)
    where = "the masks" if isinstance(masks, ImageFiles) else str(masks)
    by_key: dict[str, int] = {}
    for j, name in enumerate(mask_files.names):
        stem = name.rsplit(".", 1)[0]
        key = stem[: -len("_mask")] if stem.endswith("_mask") else stem
        if key in by_key:
            raise ValueError(f"{where}: {mask_files.names[by_key[key]]} and {name} are masks of one image")
        by_key[key] = j
    out, used = [], set()
    for name, size in zip(files.names, files.sizes):
        j = by_key.get(name.rsplit(".", 1)[0])
        if j is None:
            raise ValueError(f"{where}: no mask for {name} (looked for {name.rsplit('.', 1)[0]}.<ext> or "
                             f"{name.rsplit('.', 1)[0]}_mask.<ext>)")
        used.add(j)
        if tuple(mask_files.sizes[j]) != tuple(size):
            raise ValueError(f"{where}: the mask {mask_files.names[j]} is {mask_files.sizes[j][0]}x"
                             f"{mask_files.sizes[j][1]}, its image {name} is {size[0]}x{size[1]}")
        level = mask_files.images[j].max(axis=0)
        mask = level > (0.5 if level.max() > 0.5 else 0.0)  # 0/255 masks, and label masks that mark defects by 1
        if not mask.any():
            raise ValueError(f"{where}: the mask {mask_files.names[j]} of {name} is empty; a defective image needs "
                             "a marked defect (leave good parts out of --defects)")
        out.append(mask)
    extra = sorted(set(range(len(mask_files))) - used)
    if extra:
        raise ValueError(f"{where}: the mask {mask_files.names[extra[0]]} has no image among the defects")
    return files, out


def model_input_images(files: ImageFiles, cfg: Any) -> np.ndarray:
    """The images as the inspector's backbone sees them (``cfg`` its InspectConfig), with three channels: the
    threshold predictor's input."""
    return _three(fit_input(files, cfg.size, cfg.resize))


def mask_on_input(mask: np.ndarray, cfg: Any) -> np.ndarray:
    """A mask on the model input as its image is placed there; a pixel is defect where any of its own is (so that
    a defect of a few pixels never vanishes from the predictor's training target)."""
    import torch

    top, left, h, w = content_box(mask.shape, cfg.size, cfg.resize)
    out = np.zeros((cfg.size, cfg.size), bool)
    small = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], (h, w))
    out[top:top + h, left:left + w] = small[0, 0].numpy() > 0
    return out


class Regions:
    """Calibrated defect regions of an inspector (see the module docs); build with :meth:`fit`."""

    def __init__(self, config: RegionConfig, scale: float, threshold: float, predictor: Any | None = None,
                 record: dict | None = None) -> None:
        self.config = config
        self.scale = check_positive_float(scale, "scale")
        if not isinstance(threshold, (int, float)) or np.isnan(threshold):
            raise ValueError(f"the region threshold must be a number, got {threshold!r}")
        self.threshold = float(threshold)  # unit space: t of {u ≥ t} (crc, ltt) or the correction t' (at, coat)
        self.predictor = predictor
        self.record = record or {}

    @property
    def adaptive(self) -> bool:
        return self.config.method in ("at", "coat")

    # -- applying ----------------------------------------------------------------------------------------------
    def unit_on_images(self, maps: np.ndarray, sizes: list[tuple[int, int]], cfg: Any) -> list[np.ndarray]:
        """Maps on the model input (n, size, size) as unit maps at each image's own size."""
        from ..report.inspect_run import map_on_image

        return [unit_maps(map_on_image(m, content_box(s, cfg.size, cfg.resize), s), self.scale)
                for m, s in zip(maps, sizes)]

    def base_thresholds(self, x: np.ndarray, maps: np.ndarray) -> np.ndarray | None:
        """τ̂ per image from the predictor (AT/COAT) for model-input images and maps; None for crc/ltt."""
        if not self.adaptive:
            return None
        import torch

        self.predictor.eval()
        u = torch.from_numpy(unit_maps(maps, self.scale).astype(np.float32))
        with torch.no_grad():
            return np.concatenate([self.predictor(torch.from_numpy(x[i:i + 32]), u[i:i + 32]).double().numpy()
                                   for i in range(0, len(x), 32)])

    def regions(self, unit: list[np.ndarray], base: np.ndarray | None = None) -> list[np.ndarray]:
        """The boolean region of every image from its unit map (own size): {u ≥ t}, or {u ≥ τ̂_i − t'} written as
        the calibration writes it."""
        if not self.adaptive:
            return [u >= self.threshold for u in unit]
        return [(u >= 1.0) | ((float(b) - u) <= self.threshold) for u, b in zip(unit, base)]

    def apply(self, x: np.ndarray, maps: np.ndarray, sizes: list[tuple[int, int]], cfg: Any) -> list[np.ndarray]:
        """Regions at each image's own size for model-input images ``x`` and maps (what ``inspect`` calls)."""
        return self.regions(self.unit_on_images(maps, sizes, cfg), self.base_thresholds(_three(x), maps))

    def guarantee(self) -> str:
        c = self.config
        n = self.record.get("n_calibration", "?")
        if c.method == "ltt":
            return (f"Regions (LTT): with probability ≥ {1 - c.delta:g} over the calibration draw, the expected "
                    f"fraction of a defect's pixels missed is ≤ {c.pixel_alpha:g} and the expected area flagged on a "
                    f"good part is ≤ {c.area_alpha:g} ({n} defective and {self.record.get('n_good', '?')} good "
                    "calibration parts).")
        how = {"crc": "one threshold (CRC)", "at": "a threshold per image (AT)",
               "coat": "a threshold per image (COAT)"}[c.method]
        return (f"Regions ({how}): over defective parts like the {n} calibration parts, the expected fraction of a "
                f"defect's pixels outside its region is ≤ {c.pixel_alpha:g}.")

    def caption(self) -> str:
        """The guarantee in a few words, for the overlays (plain ASCII)."""
        c = self.config
        area = f", good-part area <= {100 * c.area_alpha:g}%, w.p. >= {1 - c.delta:g}" if c.method == "ltt" else ""
        return (f"{c.method.upper()} region: misses <= {100 * c.pixel_alpha:g}% of defect pixels on average{area} "
                f"({self.record.get('n_calibration', '?')} calibration parts)")

    # -- fitting -----------------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, inspector: Any, defects: ImageFiles, masks: list[np.ndarray], config: RegionConfig | None = None,
            good: ImageFiles | None = None, progress: bool = False) -> Regions:
        """Calibrate regions on ``defects`` (with their ``masks``) through a fitted inspector; LTT also needs the
        ``good`` calibration images (those the inspector calibrated on)."""
        cfg = config or RegionConfig()
        start = time.perf_counter()
        scale = float(inspector.record["map_scale"])
        if len(defects) != len(masks):
            raise ValueError(f"{len(defects)} defective images but {len(masks)} masks")
        n_cal = len(defects) - (int(round(cfg.train_fraction * len(defects))) if cfg.method in ("at", "coat") else 0)
        needed = int(np.ceil(1.0 / cfg.pixel_alpha - 1.0 - 1e-9))  # CRC's B / (n + 1) ≤ α
        if n_cal < max(needed, 1):
            what = f" (after {len(defects) - n_cal} train the threshold predictor)" if n_cal < len(defects) else ""
            raise ValueError(f"{n_cal} defective calibration image(s){what} are too few: a miss rate of "
                             f"{cfg.pixel_alpha} needs at least {max(needed, 1)}; give more defective images or a "
                             "larger pixel alpha")
        found = inspector.inspect(defects, progress=progress)
        probe = cls(cfg, scale, 0.0)
        unit = probe.unit_on_images(found.maps, list(found.sizes), inspector.config)
        values = defect_values(unit, masks)
        record: dict[str, Any] = {"n_defects": len(defects), "images_digest": defects.digest()}
        predictor, cal = None, np.arange(len(defects))
        if cfg.method in ("crc", "ltt"):
            if cfg.method == "crc":
                threshold = region_crc_threshold(values, cfg.pixel_alpha)
            else:
                if good is None or not len(good):
                    raise ValueError("ltt needs the good calibration images for the area on good parts")
                found_good = inspector.inspect(good, progress=progress)
                good_unit = probe.unit_on_images(found_good.maps, list(found_good.sizes), inspector.config)
                ltt = ltt_region_threshold(values, good_unit, cfg.pixel_alpha, cfg.area_alpha, cfg.delta)
                threshold = ltt.threshold
                record |= {"n_good": len(good), "certified": [ltt.lowest, ltt.highest]}
            base = None
        else:
            threshold, predictor, cal, base = cls._fit_adaptive(cfg, inspector, defects, masks, values, found.maps,
                                                                scale, progress, record)
        out = cls(cfg, scale, threshold, predictor, record)
        covered = out.regions([unit[i] for i in cal], base)
        record |= {"calibration": [defects.names[i] for i in cal], "n_calibration": int(cal.size),
                   "calibration_fnr": float(np.mean([1 - (r & m).sum() / m.sum() for r, m in
                                                     zip(covered, [masks[i] for i in cal])])),
                   "calibration_area": float(np.mean([r.mean() for r in covered])),
                   "seconds": time.perf_counter() - start}
        return out

    @staticmethod
    def _fit_adaptive(cfg: RegionConfig, inspector: Any, defects: ImageFiles, masks: list[np.ndarray],
                      values: list[np.ndarray], maps: np.ndarray, scale: float, progress: bool, record: dict
                      ) -> tuple[float, Any, np.ndarray, np.ndarray]:
        from ..conformal.risk.threshold_training import train_threshold_predictor

        n = len(defects)
        n_train = int(round(cfg.train_fraction * n))
        if n_train < 2 or n - n_train < 1:
            raise ValueError(f"{n} defective images are too few for {cfg.method}: its threshold predictor trains on "
                             f"{cfg.train_fraction:.0%} of them (at least 2) and the rest calibrate (at least 1)")
        order = np.random.default_rng(cfg.seed).permutation(n)
        train, cal = np.sort(order[:n_train]), np.sort(order[n_train:])
        x = model_input_images(defects, inspector.config)
        u = unit_maps(maps, scale).astype(np.float32)
        m = np.stack([mask_on_input(masks[i], inspector.config) for i in range(n)])
        trained = train_threshold_predictor(x[train], u[train], m[train], cfg.pixel_alpha, cfg.method, cfg.epochs,
                                            seed=cfg.seed, progress=progress, predictor=cfg.predictor)
        probe = Regions(cfg, scale, 0.0, trained.model)
        base = probe.base_thresholds(x[cal], maps[cal])
        correction = region_adaptive_correction([values[i] for i in cal], base, cfg.pixel_alpha)
        record |= {"train": [defects.names[i] for i in train], "train_loss": trained.losses}
        return correction, trained.model, cal, base

    # -- persistence -------------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Tensors (the predictor's, for AT/COAT) and JSON settings, for the inspector's file."""
        tensors = {} if self.predictor is None else {f"predictor.{k}": v.detach().cpu().numpy()
                                                     for k, v in self.predictor.state_dict().items()}
        return tensors, {"settings": asdict(self.config), "scale": self.scale, "threshold": self.threshold,
                         "record": self.record}

    @classmethod
    def from_state(cls, tensors: dict[str, Any], config: Any, source: str, scale: float) -> Regions:
        """What :meth:`state` wrote, every field checked; ``scale`` is the inspector's map scale."""
        if not isinstance(config, dict) or set(config) != {"settings", "scale", "threshold", "record"}:
            raise ValueError(f"{source}: the stored regions are damaged")
        settings = config["settings"]
        if not isinstance(settings, dict) or set(settings) != {f.name for f in fields(RegionConfig)}:
            raise ValueError(f"{source}: the stored region settings are not those of regions")
        try:
            cfg = RegionConfig(**settings)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: stored region settings are refused: {exc}") from None
        threshold = config["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold) and \
                threshold != float("inf"):
            raise ValueError(f"{source}: the region threshold is damaged")
        if config["scale"] != scale:
            raise ValueError(f"{source}: the regions were calibrated on another map scale")
        if not isinstance(config["record"], dict) or not isinstance(config["record"].get("n_calibration"), int):
            raise ValueError(f"{source}: the region record is damaged")
        predictor = None
        if cfg.method in ("at", "coat"):
            predictor = _load_predictor(cfg.predictor, tensors, source)
        elif tensors:
            raise ValueError(f"{source}: a threshold predictor stored with {cfg.method} regions")
        return cls(cfg, scale, float(threshold), predictor, config["record"])


def _load_predictor(name: str, tensors: dict[str, Any], source: str) -> Any:
    import torch

    from ..conformal.risk.threshold_training import threshold_predictor

    with torch.random.fork_rng(devices=[]):
        model = threshold_predictor(name)
    state = {k[len("predictor."):]: torch.as_tensor(v) for k, v in tensors.items() if k.startswith("predictor.")}
    if set(state) != set(model.state_dict()) or len(state) != len(tensors):
        raise ValueError(f"{source}: the threshold predictor's tensors are damaged")
    for k, v in model.state_dict().items():
        if state[k].shape != v.shape or state[k].dtype != v.dtype or (v.is_floating_point() and
                                                                      not torch.isfinite(state[k]).all()):
            raise ValueError(f"{source}: the threshold predictor's tensor {k!r} is damaged")
    model.load_state_dict(state)
    return model.eval()


def _three(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x[:, :3], dtype=np.float32)
