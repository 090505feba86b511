"""``conformood inspect run``: judge a folder of images with a saved inspector and write what it found (results,
maps, overlays, regions and the HTML report)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .._validation import check_alpha
from ..data.image_files import ImageFiles, read_image_files
from ..io import file_digest
from ..results import provenance
from .inspect import KIND, InspectConfig, Inspector
from .inspect_config import content_box
from .inspect_regions import RegionConfig, Regions, read_defects

RUN_OUTPUTS = ("results.csv", "results.json", "report.html", "maps", "overlays", "regions")


def load_inspector(path: str | os.PathLike) -> Inspector:
    """:meth:`Inspector.load`, with a clear error for a file of another kind (a detector, a model)."""
    from ..io import saved_kind

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no inspector file at {p}")
    kind = saved_kind(p)
    if kind != KIND:
        what = f"a {kind!r}" if kind else "no conformood artefact"
        raise ValueError(f"{p} holds {what}, not an inspector (write one with `conformood inspect fit`)")
    return Inspector.load(p)


def run_inspection(model: str | os.PathLike, images: str | os.PathLike | ImageFiles, out: str | os.PathLike,
                   alpha: float | None = None, maps: bool = True, progress: bool = False,
                   skip_bad: bool = False) -> dict:
    """Judge every image of a folder (or :class:`ImageFiles` read already) with a saved inspector; write the
    results, maps, overlays and report into ``out`` (see :func:`conformood.report.inspect_run.write_inspection`)."""
    from ..report.inspect_run import write_inspection

    start = time.perf_counter()
    inspector = load_inspector(model)
    alpha = inspector.config.alpha if alpha is None else check_alpha(alpha)
    files = images if isinstance(images, ImageFiles) else read_image_files(images, skip_bad=skip_bad,
                                                                          progress=progress)
    found = inspector.inspect(files, alpha=alpha, progress=progress)
    boxes = [content_box(s, inspector.config.size, inspector.config.resize) for s in found.sizes]
    cfg = inspector.config
    rule = "PAC: realised false-alarm rate ≤ α with probability ≥ 1 − δ = " + f"{1 - cfg.delta:g}" if cfg.delta \
        else "marginal: P(flag a good part) ≤ α"
    summary = {
        "provenance": provenance({"model": str(model), "images": f"{len(files)} images given in memory" if
                                  isinstance(images, ImageFiles) else str(images), "alpha": alpha, "maps": maps,
                                  "skip_bad": skip_bad}, {"model": model}),
        "images_digest": files.digest(),
        "model": {"file": Path(model).name, "sha256": file_digest(Path(model)), "backbone": cfg.backbone,
                  "local": cfg.local, "input_size": cfg.size, "resize": cfg.resize, "pooled": cfg.pooled,
                  "rule": cfg.rule,
                  "n_calibration": int(inspector.conformal.calibration_[-1].size), "fitted_alpha": cfg.alpha,
                  "delta": cfg.delta, "map_scale": inspector.record["map_scale"]},
        "guarantee": f"Decision rule {rule}, at α = {alpha}, for parts exchangeable with the "
                     f"{int(inspector.conformal.calibration_[-1].size)} good calibration parts.",
    }
    if inspector.regions is not None:
        reg = inspector.regions
        summary["regions"] = {"method": reg.config.method, "pixel_alpha": reg.config.pixel_alpha,
                              "area_alpha": reg.config.area_alpha, "delta": reg.config.delta,
                              "n_calibration": reg.record.get("n_calibration"), "guarantee": reg.guarantee(),
                              "caption": reg.caption()}
    result = write_inspection(out, found, boxes, inspector.record["map_scale"], alpha, summary, maps=maps)
    result["seconds"] = time.perf_counter() - start
    return result


def fit_inspection(normal: str | os.PathLike, config: InspectConfig | None = None,
                   defects: str | os.PathLike | None = None, masks: str | os.PathLike | None = None,
                   regions: RegionConfig | None = None, progress: bool = False, skip_bad: bool = False) -> Inspector:
    """``conformood inspect fit``: :meth:`Inspector.fit` on a folder of good images, and with ``defects`` and
    ``masks`` its defect regions (:meth:`Regions.fit`; the masks are read and matched before anything is fitted)."""
    if (defects is None) != (masks is None):
        raise ValueError("defect regions need both the defective images and their masks")
    if regions is not None and defects is None:
        raise ValueError("region settings were given without defective images and masks to calibrate them")
    found = read_defects(defects, masks, progress=progress) if defects is not None else None
    rcfg = regions or RegionConfig()
    files = read_image_files(normal, skip_bad=skip_bad, progress=progress)  # read once: LTT needs them again
    inspector = Inspector.fit(files, config, progress=progress, source=normal)
    if found is not None:
        good = None
        if rcfg.method == "ltt":
            keep = set(inspector.record["split"]["calibration"]) | set(inspector.record["split"].get("reference", []))
            good = files.subset([i for i, n in enumerate(files.names) if n in keep])
        inspector.regions = Regions.fit(inspector, found[0], found[1], rcfg, good=good, progress=progress)
    return inspector
