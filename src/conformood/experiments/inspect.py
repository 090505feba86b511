"""Inspection of parts from a folder of images: fit on good parts, decide on new ones with a stated false-alarm rate.

:class:`Inspector` is what ``conformood inspect fit`` builds and ``inspect run`` applies:

1. **Split.** The good images are split at random (``seed``) into a *fitting* part and a *calibration* part
   (``calibration_fraction``); the names of both are recorded, and no calibration image is ever fitted.
2. **Features.** Every image is brought to the backbone's input (``resize``: ``"stretch"`` to the square input,
   or ``"pad"``: the long side to the input, the short side padded by repeating its edge, keeping the aspect
   ratio) and read as PatchCore patch features (two mid-level stages, :func:`conformood.models.get_backbone`),
   and, with ``pooled=True``, also as the backbone's pooled features.
3. **Detectors.** :class:`~conformood.scores.PatchCoreDetector` (Roth et al. 2022; its image score and anomaly
   map) on the patch features; with ``pooled=True`` a kNN score (FIRM eq. 3, cosine, k = 1) on the pooled ones,
   the two joined as :class:`~conformood.conformal.ConformalEnsemble` joins detectors (``rule``): the calibration
   part is split again into reference and calibration halves, each member's score becomes a p-value against
   its reference scores, and the rule's statistic is what is calibrated.
4. **Decision.** Split conformal calibration of the image statistic (:class:`ConformalDetector`): a good part is
   flagged with probability ≤ α over the calibration draw (with ``delta``, the PAC form: the realised rate is
   ≤ α with probability ≥ 1 − δ).

The fitted inspector is one digest-checked safetensors file (kind ``"Inspector"``): the detectors' states, the
reference and calibration statistics, the settings and the record of how its features were made (backbone,
weights digest, input size, resize); :meth:`Inspector.load` checks every field and the backbone's weights
against that record before it decides anything.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .._validation import check_alpha
from ..conformal import ConformalDetector
from ..conformal.detection.ensemble import CombinedScore
from ..data.image_files import ImageFiles, read_image_files
from ..io import load_state, save_state
from ..results import provenance
from ..scores import PatchCoreDetector, detector_from_state, get_detector
from ..scores.patchcore import patch_maps_to_image
from .inspect_config import RESIZES, InspectConfig, content_box, fit_input  # noqa: F401  (re-exported)
from .inspect_regions import Regions
from .sources import Encoder, check_feature_source, get_encoder

KIND = "Inspector"
FORMAT = 2  # 2: the joined score's member p-values have a continuous tail (1: the floor 1/(|R| + 1), still read)
FORMATS = (1, 2)


@dataclass
class Inspection:
    """What :meth:`Inspector.inspect` finds for a folder: per image its name, anomaly ``score`` (higher = more
    anomalous), conformal ``p_value`` and ``flag`` (p ≤ α, or the PAC rule), the anomaly map on the model input
    (``maps``, (n, size, size), patch distances) and the image's own size."""

    names: list[str]
    scores: np.ndarray
    p_values: np.ndarray
    flags: np.ndarray
    maps: np.ndarray
    sizes: list[tuple[int, int]]
    skipped: list[str]
    images: list[np.ndarray]
    ignored: list[str]
    regions: list[np.ndarray] | None = None  # with calibrated regions: each image's region at its own size


class Inspector:
    """A fitted, calibrated inspection model (see the module docs); build it with :meth:`fit` or :meth:`load`."""

    def __init__(self, config: InspectConfig, local: Any, knn: Any | None,
                 references: list[np.ndarray] | None, calibration: np.ndarray, sources: dict[str, dict],
                 record: dict, file_format: int = FORMAT) -> None:
        self.config = config
        self.format = file_format  # how the joined score is computed (see FORMAT); kept when saved again
        self.local = local
        self.knn = knn
        self.references = references
        self.sources = sources
        self.record = record
        self.conformal = ConformalDetector(_Statistic(), alpha=config.alpha).calibrate_scores(
            calibration, delta=config.delta)
        self._encoders: dict[str, Encoder] = {}
        self.regions: Regions | None = None  # defect regions with a stated miss rate (inspect_regions)

    @property
    def patchcore(self) -> Any:
        """The local detector (PatchCore, or the patch Gaussian with ``local="gaussian"``)."""
        return self.local

    @property
    def score_shift(self) -> float:
        """An image's anomaly score (higher = more anomalous) is ``score_shift`` − the calibrated statistic: the
        worst-patch distance alone (0), or with the pooled member the joined statistic turned round (fisher:
        −Σ log p ≥ 0; min_p and mean_rank: 1 − the p-value statistic)."""
        return 1.0 if self.knn is not None and self.config.rule in ("min_p", "mean_rank") else 0.0

    def local_scores_and_maps(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The local detector's image anomaly scores and maps on the model input (see :func:`local_scores_and_maps`)."""
        return local_scores_and_maps(self.local, self.config, patches)

    # -- building ----------------------------------------------------------------------------------------------
    @staticmethod
    def _make_encoders(cfg: InspectConfig) -> dict[str, Encoder]:
        features = {"patch_stages": cfg.stages, "patch_dim": cfg.patch_dim} if cfg.local == "patchcore" else \
            {"patches_after": cfg.stages[0]}
        encoders = {"patches": get_encoder(backbone=cfg.backbone, weights=cfg.weights, input_size=cfg.size,
                                           **features)}
        if cfg.pooled:
            encoders["pooled"] = get_encoder(backbone=cfg.backbone, weights=cfg.weights, input_size=cfg.size)
        for enc in encoders.values():
            enc.record["resize"] = f"{cfg.resize} ({enc.record['resize']})"
        return encoders

    @classmethod
    def fit(cls, normal: str | os.PathLike | ImageFiles, config: InspectConfig | None = None,
            progress: bool = False, skip_bad: bool = False, source: str | os.PathLike | None = None) -> Inspector:
        """Fit on the good images of a folder (or :class:`ImageFiles`): split, extract, build the memory bank,
        calibrate. ``source``: the folder that given :class:`ImageFiles` were read from, for the provenance
        record (a folder given as ``normal`` is recorded itself)."""
        cfg = config or InspectConfig()
        start = time.perf_counter()
        files = normal if isinstance(normal, ImageFiles) else read_image_files(normal, skip_bad=skip_bad,
                                                                              progress=progress)
        n = len(files)
        n_cal = int(round(cfg.calibration_fraction * n))
        needed = int(np.ceil(1.0 / cfg.alpha)) - 1  # the fewest calibration scores that can flag at α
        if cfg.pooled:
            needed *= 2  # half of them are the ensemble's reference scores
        if n_cal < max(needed, 2) or n - n_cal < 2:
            why = " (half of them references of the joined score)" if cfg.pooled else ""
            raise ValueError(f"{n} good image(s) are too few: at α = {cfg.alpha} the calibration part needs at least "
                             f"{max(needed, 2)} images{why} and the fitting part 2; give more good images, a larger α "
                             "or a larger calibration_fraction")
        order = np.random.default_rng(cfg.seed).permutation(n)
        cal, fit = np.sort(order[:n_cal]), np.sort(order[n_cal:])
        encoders = cls._make_encoders(cfg)
        x = fit_input(files, cfg.size, cfg.resize)
        patches = encoders["patches"].encode(x, cfg.batch_size, progress=progress)
        bank = [patches[fit]] + [encoders["patches"].encode(np.ascontiguousarray(np.flip(x[fit], axis=-1 if a ==
                                                            "hflip" else -2)), cfg.batch_size, progress=progress)
                                 for a in cfg.augment]
        if cfg.local == "patchcore":
            local = PatchCoreDetector(coreset_fraction=cfg.coreset_fraction, border=cfg.border, seed=cfg.seed,
                                      projection_dim=None if patches.shape[2] <= 256 else 128, progress=progress)
        else:
            local = get_detector("patch_gaussian")
        local.fit(np.concatenate(bank) if len(bank) > 1 else bank[0])
        t_fit = time.perf_counter() - start
        stat_pc = -np.concatenate([local_scores_and_maps(local, cfg, patches[cal[i:i + 64]])[0]  # maps in chunks
                                   for i in range(0, cal.size, 64)])
        knn, references = None, None
        split: dict[str, Any] = {"fit": [files.names[i] for i in fit]}
        if cfg.pooled:
            pooled = encoders["pooled"].encode(x, cfg.batch_size, progress=progress)
            knn = get_detector("knn_cosine", n_neighbors=1).fit(pooled[fit])
            stat_knn = knn.score_samples(pooled[cal])
            half = np.random.default_rng(cfg.seed + 1).permutation(cal.size)
            ref, rest = np.sort(half[: cal.size // 2]), np.sort(half[cal.size // 2:])
            references = [np.sort(stat_pc[ref]), np.sort(stat_knn[ref])]
            combined = CombinedScore([_Statistic(), _Statistic()], cfg.rule, references, tail=True)
            calibration = combined.score_samples([stat_pc[rest], stat_knn[rest]])
            split |= {"reference": [files.names[cal[i]] for i in ref],
                      "calibration": [files.names[cal[i]] for i in rest]}
        else:
            calibration = stat_pc
            split["calibration"] = [files.names[i] for i in cal]
        # the colour scale of the maps: the patch distance that the (1 − α) quantile of good images reaches
        worst = _patch_distances(local, patches[cal]).max(axis=1)
        record = {"split": split, "skipped": list(files.skipped), "ignored": list(files.ignored), "n_good": n,
                  "images_digest": files.digest(),
                  "map_scale": float(np.quantile(worst, 1 - cfg.alpha)),
                  "provenance": provenance(asdict(cfg), {"normal": normal} if not isinstance(normal, ImageFiles)
                                           else {"normal": source} if source is not None else {}, seed=cfg.seed),
                  "seconds": {"fit": t_fit, "total": time.perf_counter() - start}}
        sources = {k: dict(e.record) for k, e in encoders.items()}
        out = cls(cfg, local, knn, references, calibration, sources, record, FORMAT)
        out._encoders = encoders
        return out

    # -- deciding ----------------------------------------------------------------------------------------------
    def encoders(self) -> dict[str, Encoder]:
        """The encoders, rebuilt from the stored settings and checked against the stored record (weights digest,
        input size, preprocessing): a different backbone file is refused, never silently used."""
        if not self._encoders:
            built = self._make_encoders(self.config)
            for key, enc in built.items():
                check_feature_source(self.sources[key], enc.record, origin=f"the {key} encoder rebuilt now",
                                     fitted_name="the inspector")
            self._encoders = built
        return self._encoders

    def _combine(self, stat_pc: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
        """The calibrated statistic (higher = more normal): PatchCore's −s, or the members' combined p-values."""
        if self.knn is None:
            return stat_pc
        stat_knn = self.knn.score_samples(pooled)
        return CombinedScore([_Statistic(), _Statistic()], self.config.rule, self.references,
                             tail=self.format >= 2).score_samples(
            [stat_pc, stat_knn])

    def inspect(self, images: str | os.PathLike | ImageFiles, alpha: float | None = None, progress: bool = False,
                skip_bad: bool = False, batch: int = 64) -> Inspection:
        """Score every image of a folder (or :class:`ImageFiles`): scores, p-values, flags and anomaly maps."""
        alpha = self.config.alpha if alpha is None else check_alpha(alpha)
        files = images if isinstance(images, ImageFiles) else read_image_files(images, skip_bad=skip_bad,
                                                                              progress=progress)
        encoders = self.encoders()
        size = self.config.size
        stats, maps, regions = [], [], []
        for s in range(0, len(files), batch):
            x = fit_input(files.images[s:s + batch], size, self.config.resize)
            patches = encoders["patches"].encode(x, self.config.batch_size, progress=progress)
            pooled = encoders["pooled"].encode(x, self.config.batch_size) if self.knn is not None else None
            s_pc, m = self.local_scores_and_maps(patches)
            stats.append(self._combine(-s_pc, pooled))
            maps.append(m)
            if self.regions is not None:
                regions += self.regions.apply(x, m, list(files.sizes[s:s + batch]), self.config)
        stat = np.concatenate(stats)
        p = self.conformal.p_values_from_scores(stat)
        flags = self.conformal.flags_from_scores(stat, alpha)
        return Inspection(list(files.names), self.score_shift - stat, p, flags, np.concatenate(maps), list(files.sizes),
                          list(files.skipped), files.images, list(files.ignored),
                          regions if self.regions is not None else None)

    # -- persistence -------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """One safetensors file (kind ``"Inspector"``) with a digest over all of it; written atomically."""
        tensors: dict[str, np.ndarray] = {"calibration": self.conformal.calibration_[-1]}
        pc_t, pc_c = self.local.state()
        tensors |= {f"{_LOCAL_PREFIX[self.config.local]}{k}": v for k, v in pc_t.items()}
        config: dict[str, Any] = {"format": self.format, "settings": asdict(self.config), "sources": self.sources,
                                  "record": self.record, "patchcore": pc_c}
        if self.knn is not None:
            knn_t, knn_c = self.knn.state()
            tensors |= {f"knn.{k}": v for k, v in knn_t.items()}
            tensors |= {f"reference.{j}": r for j, r in enumerate(self.references or [])}
            config["knn"] = {"kind": type(self.knn).__name__, "config": knn_c}
        if self.regions is not None:
            reg_t, config["regions"] = self.regions.state()
            tensors |= {f"regions.{k}": v for k, v in reg_t.items()}
        save_state(path, tensors, config, kind=KIND)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Inspector:
        """Read what :meth:`save` wrote, checking the digest, the kind, the format and every field."""
        source = str(path)
        tensors, config = load_state(path, kind=KIND)
        arrays = {k: v.numpy() for k, v in tensors.items()}
        if config.get("format") not in FORMATS:
            raise ValueError(f"{source}: inspector format {config.get('format')!r}, this conformood reads "
                             f"{', '.join(map(str, FORMATS))}")
        unknown = sorted(set(config) - {"format", "settings", "sources", "record", "patchcore", "knn", "regions"})
        if unknown:
            raise ValueError(f"{source}: unknown field {unknown[0]!r}")
        settings = config.get("settings")
        names = {f.name for f in fields(InspectConfig)}
        later = {"augment", "local", "image_score", "map_sigma"}  # settings added since format 1: defaults when absent
        if not isinstance(settings, dict) or not names - later <= set(settings) <= names:
            raise ValueError(f"{source}: the stored settings are not those of an inspector")
        try:
            cfg = InspectConfig(**settings)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: stored settings are refused: {exc}") from None
        sources, record = config.get("sources"), config.get("record")
        wanted = {"patches", "pooled"} if cfg.pooled else {"patches"}
        if not isinstance(sources, dict) or set(sources) != wanted or not all(isinstance(v, dict) for v in
                                                                                sources.values()):
            raise ValueError(f"{source}: the feature records do not match the settings")
        recorded = sources["patches"].get("patches")
        stages = None if not isinstance(recorded, dict) else recorded.get("stages") if cfg.local == "patchcore" \
            else [recorded.get("after_blocks")]
        if not isinstance(recorded, dict) or list(stages or []) != list(cfg.stages) or \
                sources["patches"].get("input_size") != [cfg.size, cfg.size]:
            raise ValueError(f"{source}: the feature records do not match the settings (stages, input size)")
        if not isinstance(record, dict) or not isinstance(record.get("map_scale"), (int, float)) or not \
                np.isfinite(record["map_scale"]) or record["map_scale"] <= 0:
            raise ValueError(f"{source}: the fitting record is missing or damaged")
        prefix = _LOCAL_PREFIX[cfg.local]
        local = detector_from_state(_LOCAL_KIND[cfg.local], _prefixed(tensors, prefix), config.get("patchcore") or {},
                                    source)
        knn, references = None, None
        if cfg.pooled:
            inner = config.get("knn")
            if not isinstance(inner, dict) or not isinstance(inner.get("config"), dict):
                raise ValueError(f"{source}: the pooled kNN detector is missing")
            knn = detector_from_state(inner.get("kind"), _prefixed(tensors, "knn."), inner["config"], source)
            references = [arrays.get(f"reference.{j}") for j in range(2)]
            for r in references:
                if r is None or r.ndim != 1 or r.size < 1 or not np.isfinite(r).all() or np.any(np.diff(r) < 0):
                    raise ValueError(f"{source}: reference scores missing or damaged")
        elif config.get("knn") is not None or any(k.startswith(("knn.", "reference.")) for k in arrays):
            raise ValueError(f"{source}: pooled members stored in an inspector without pooled=True")
        expected = {"calibration"} | {f"{prefix}{k}" for k in _prefixed(arrays, prefix)} | \
            ({f"knn.{k}" for k in _prefixed(arrays, "knn.")} | {"reference.0", "reference.1"} if cfg.pooled else set())
        expected |= {f"regions.{k}" for k in _prefixed(arrays, "regions.")} if "regions" in config else set()
        if set(arrays) != expected:
            raise ValueError(f"{source}: unexpected tensor {sorted(set(arrays) - expected)[0]!r}")
        cal = arrays.get("calibration")
        if cal is None or cal.ndim != 1 or cal.size < 1 or not np.isfinite(cal).all() or np.any(np.diff(cal) < 0):
            raise ValueError(f"{source}: calibration statistics missing or damaged")
        out = cls(cfg, local, knn, references, cal, sources, record, int(config["format"]))
        if "regions" in config:
            out.regions = Regions.from_state(_prefixed(tensors, "regions."), config["regions"], source,
                                             record["map_scale"])
        return out

    def describe(self) -> dict:
        """The settings, decision rule and fitting record, as JSON (for results files)."""
        return {"settings": asdict(self.config), "sources": self.sources,
                "n_calibration": int(self.conformal.calibration_[-1].size),
                "decision": self.conformal.decision_rule(self.config.alpha),
                **{k: v for k, v in self.record.items() if k != "split"},
                "split_sizes": {k: len(v) for k, v in self.record["split"].items()},
                **({"regions": {"guarantee": self.regions.guarantee(), **self.regions.state()[1]}}
                   if self.regions is not None else {})}


def local_scores_and_maps(local: Any, cfg: InspectConfig, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image anomaly scores (``cfg.image_score``: the worst patch, or the peak of the map) and anomaly maps on the
    model input (patch distances upsampled and smoothed with ``cfg.map_sigma``) of the local detector."""
    size, grid = cfg.size, int(round(np.sqrt(patches.shape[1])))
    if isinstance(local, PatchCoreDetector) and cfg.image_score == "worst_patch":
        return local.scores_and_maps(patches, (grid, grid), (size, size), cfg.map_sigma)
    d = _patch_distances(local, patches)
    maps = patch_maps_to_image(d, (grid, grid), (size, size), cfg.map_sigma)
    return (d.max(axis=1) if cfg.image_score == "worst_patch" else maps.reshape(len(maps), -1).max(axis=1)), maps


def _patch_distances(local: Any, patches: np.ndarray) -> np.ndarray:
    """(n_images, n_patches): each patch's distance under the local detector (PatchCore: to its nearest memory
    patch; the patch Gaussian: its Mahalanobis distance)."""
    return local.patch_scores(patches) if isinstance(local, PatchCoreDetector) else local.patch_distances(patches)


_LOCAL_PREFIX = {"patchcore": "patchcore.", "gaussian": "gaussian."}  # the local detector's tensors in the file
_LOCAL_KIND = {"patchcore": "PatchCoreDetector", "gaussian": "PatchGaussianDetector"}


def _prefixed(arrays: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


class _Statistic:
    """A precomputed statistic as a detector (the inspector calibrates and combines numbers it has computed)."""

    def score_samples(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)
