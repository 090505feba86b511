"""Scoring on Ray Data against the single process: rows per second, start-up apart, and exactness row for row.

Two jobs, each run by ``conformood score``'s code on one process (``score_file``) and on a local Ray instance
(``score_ray``) with 1 worker of 2 threads and 2 workers of 1 thread each:

* features: ``--rows`` rows (128-d, float32) scored by s_con (kNN, k = 1) on a bank of 10,000 rows;
* images: ``--images`` CIFAR-10 test images (JPEG files in a folder, 200 per class) through frozen MobileNetV2
  (ImageNet weights, 128² input, pooled), scored by s_con on 1,000 training images.

Ray's start-up (``ray.init``) and the workers' (importing the library, loading the detector and the encoder: the
first worker ready) are timed apart from the scoring; the overhead ratio is the Ray path's time without them over
the single process's time (both read the inputs, score, decide BH and write their outputs). Exactness: the Ray
results must equal the single process run with the same threads per worker, score for score (first ``--exact``
feature rows and every image). Writes ``scale_ray.json`` and ``scale_ray.md``.

    python benchmarks/scale_ray.py [--data ../shared/data/cifar10-jpg.tar.gz] [--rows 100000] [--images 2000]
"""

from __future__ import annotations

import argparse
import logging
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from conformood.conformal import ConformalDetector
from conformood.experiments.deploy import score_file
from conformood.experiments.scale import score_ray
from conformood.experiments.sources import get_encoder, image_features
from conformood.io import write_json, write_text
from conformood.results import environment, provenance
from conformood.scores import get_detector

DATA = Path("../shared/data/cifar10-jpg.tar.gz")


def _images(data: Path, root: Path, split: str, per_class: int) -> Path:
    """``per_class`` JPEGs of each class of ``split`` unpacked into ``root/split/<class>/``."""
    counts: dict[str, int] = {}
    with tarfile.open(data) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-3] == split and counts.get(parts[-2], 0) < per_class:
                counts[parts[-2]] = counts.get(parts[-2], 0) + 1
                target = root / split / parts[-2] / parts[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(m).read())
    return root / split


def _fresh_cache(work: Path) -> None:
    """A cache of its own for the run (the weights linked from the user's): no feature is read from an earlier run,
    so every timing encodes its images."""
    import os
    import shutil

    from conformood.models.backbones import cache_dir

    weights = cache_dir() / "weights"
    os.environ["CONFORMOOD_CACHE"] = str(work / "cache")
    (work / "cache").mkdir(exist_ok=True)
    if weights.is_dir() and not (work / "cache" / "weights").exists():
        (work / "cache" / "weights").symlink_to(weights)
    shutil.rmtree(work / "cache" / "features", ignore_errors=True)


def _single(detector: Path, out: Path, threads: int, **source) -> tuple[dict, float]:
    _fresh_cache(out.parent)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    try:
        with threadpool_limits(threads):
            t0 = time.perf_counter()
            result = score_file(detector, out=out / "single.json", **source)
            return result, time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)


def _ray_run(detector: Path, out: Path, workers: int, threads: int, **source) -> tuple[dict, dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    summary = score_ray(detector, out=out, workers=workers, threads=threads, **source)
    wall = time.perf_counter() - t0
    table = pa.concat_tables([pq.read_table(out / p["file"]) for p in summary["parts"]]).to_pydict()
    return summary, {"wall": wall, "table": table}


def _job(name: str, detector: Path, work: Path, n: int, exact_n: int, **source) -> dict:
    """Single process (2 threads and 1 thread) and Ray (1×2 and 2×1); times, rates and exactness."""
    rows = {}
    single2, t2 = _single(detector, work / f"{name}-s2", 2, **source)
    single1, t1 = _single(detector, work / f"{name}-s1", 1, **source)
    rows["single, 2 threads"] = {"seconds": t2, "rows_per_s": n / t2}
    rows["single, 1 thread"] = {"seconds": t1, "rows_per_s": n / t1}
    for workers, threads, ref in ((1, 2, single2), (2, 1, single1)):
        summary, run = _ray_run(detector, work / f"{name}-ray{workers}", workers, threads, **source)
        sec = summary["seconds"]
        scoring = run["wall"] - sec["ray_start"] - sec["workers_ready"]
        table = run["table"]
        exact = {key: bool(np.array_equal(np.asarray(table[col][:exact_n]), np.asarray(ref[key][:exact_n])))
                 for key, col in (("score", "score"), ("p_value", "p_value"), ("flagged", "flag"),
                                  ("bh_selected", "bh_selected"))}
        rows[f"ray, {workers} worker(s) x {threads} thread(s)"] = {
            "seconds": run["wall"], "workers_ready_s": sec["workers_ready"], "without_start_up_s": scoring,
            "rows_per_s": n / scoring, "exact_vs_single_same_threads": exact, "exact_rows": exact_n}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--exact", type=int, default=20_000, help="feature rows checked for exactness")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    import ray

    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _fresh_cache(work)  # before Ray starts: its workers take the environment of this process
        det = ConformalDetector(get_detector("knn_cosine").fit(rng.normal(size=(10_000, 128)).astype(np.float32)))
        det.calibrate(rng.normal(size=(1000, 128)).astype(np.float32)).save(work / "features.safetensors")
        np.savez(work / "x.npz", features=rng.normal(size=(args.rows, 128)).astype(np.float32))
        test = _images(args.data, work / "cifar", "test", args.images // 10)
        train = _images(args.data, work / "cifar", "train", 150)
        enc = get_encoder(backbone="mobilenet_v2", input_size=128)
        fit = image_features(train, enc)
        cd = ConformalDetector(get_detector("knn_cosine").fit(fit.features[:1000]), feature_source=fit.source)
        cd.calibrate(fit.features[1000:]).save(work / "images.safetensors")
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        ray_start = time.perf_counter() - t0
        try:
            features = _job("features", work / "features.safetensors", work, args.rows, args.exact,
                            inputs=work / "x.npz")
            images = _job("images", work / "images.safetensors", work, args.images, args.images, images=test)
        finally:
            ray.shutdown()
    ray1 = features["ray, 1 worker(s) x 2 thread(s)"]
    ratio = ray1["without_start_up_s"] / features["single, 2 threads"]["seconds"]
    result = {
        "provenance": provenance(vars(args), {"data": args.data}, seed=args.seed),
        "ray_version": ray.__version__, "ray_start_s": ray_start,
        "features": features, "images": images,
        "overhead_ratio_one_worker_features": ratio, "overhead_holds": bool(ratio < 1.3),
        "seconds_total": time.perf_counter() - started, "environment": environment(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "scale_ray.json", result)
    lines = ["# Scoring on Ray Data against the single process", "",
             f"`python benchmarks/scale_ray.py --rows {args.rows} --images {args.images}` (2 cores; ray "
             f"{ray.__version__}; {result['seconds_total']:.0f} s in all). Ray start-up (`ray.init`, local, 2 CPUs): "
             f"{ray_start:.1f} s.", ""]
    for title, rows, n in (("features", features, args.rows), ("images", images, args.images)):
        lines += [f"## {title}: {n} rows", "", "| engine | wall s | workers ready s | scoring s (no start-up) | "
                  "rows/s | equal to single (same threads) |", "|---|---|---|---|---|---|"]
        for k, v in rows.items():
            exact = v.get("exact_vs_single_same_threads")
            lines.append(f"| {k} | {v['seconds']:.2f} | {v.get('workers_ready_s', 0):.2f} | "
                         f"{v.get('without_start_up_s', v['seconds']):.2f} | {v['rows_per_s']:.0f} | "
                         f"{'-' if exact is None else ('yes, ' + str(v['exact_rows']) + ' rows' if all(exact.values()) else exact)} |")
        lines.append("")
    img1 = images["ray, 1 worker(s) x 2 thread(s)"]["without_start_up_s"] / images["single, 2 threads"]["seconds"]
    img2 = images["ray, 2 worker(s) x 1 thread(s)"]["without_start_up_s"] / images["single, 1 thread"]["seconds"]
    lines += [f"Overhead of the Ray path on one worker (features, without start-up) over the single process: "
              f"**{ratio:.2f}×** ({'under' if ratio < 1.3 else 'NOT under'} 1.3×).", "",
              f"Images: the Ray path's time over the single process's with the same threads per worker: {img1:.2f}× "
              f"(1 worker × 2 threads), {img2:.2f}× (2 workers × 1 thread).", ""]
    write_text(args.out / "scale_ray.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
