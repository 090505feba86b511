"""Shared machinery of the one-vs-rest training benchmarks: train one encoder per (class, method) on the
normal class's training images, score the test set with s_con (FIRM eq. 3) on the encoder's features and
s_l2 (OECL eq. 9: the norm of the unnormalised projection), compare with raw-pixel s_con, and keep every
finished run in its own JSON at once, so that a stopped benchmark continues where it stopped and several processes
can share the classes."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from conformood.io import write_json
from conformood.metrics import ood_metrics
from conformood.models import encode
from conformood.report import render_one_vs_rest
from conformood.results import provenance
from conformood.scores import get_detector
from conformood.train.recipes import train_contrastive_encoder
from conformood.train.run_config import TrainRunConfig

CONFIG_KEYS = ("epochs", "n_train", "batch_size", "lr", "crop_scale_min", "weight_decay", "k", "seed")


def s_con(f_train: np.ndarray, f_test: np.ndarray, k: int) -> np.ndarray:
    """Cosine similarity to the k-th nearest training feature (higher = more normal)."""
    return get_detector("knn_cosine", n_neighbors=k).fit(f_train).score_samples(f_test)


def projection_norms(model, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """s_l2 (OECL eq. 9): ||g(f(x))||_2 of the unnormalised projection, in evaluation mode."""
    return encode(model, x, batch_size=batch_size).norm(dim=1).numpy()


def class_sampler(data, n_train: int) -> Callable[[int, np.random.Generator], torch.Tensor]:
    """``train_images`` for :func:`run_benchmark`: ``n_train`` images of class c drawn without replacement
    from the :class:`~conformood.data.ImageArrays` ``data`` (all of them when the class has fewer)."""

    def train_images(c: int, rng: np.random.Generator) -> torch.Tensor:
        pool = (data.labels == c).nonzero()[0]
        return data.tensor(np.sort(rng.choice(pool, size=min(n_train, pool.size), replace=False)))

    return train_images


def add_common_arguments(parser, epochs: int, n_train: int, batch_size: int, crop_scale_min: float,
                         weight_decay: float, out: Path) -> None:
    parser.add_argument("--classes", type=int, nargs="+")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--n-train", type=int, default=n_train)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--crop-scale-min", type=float, default=crop_scale_min)
    parser.add_argument("--weight-decay", type=float, default=weight_decay)
    parser.add_argument("--k", type=int, default=5, help="neighbours of s_con")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show a progress bar per training run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process (0: torch's default); run several processes on disjoint "
                             "--classes with --threads 1 to use every core")
    parser.add_argument("--out", type=Path, default=out)


def run_benchmark(
    *,
    name: str,
    title: str,
    args,
    class_names: list[str],
    train_images: Callable[[int, np.random.Generator], torch.Tensor],
    x_test: torch.Tensor,
    test_labels: np.ndarray,
    methods: dict[str, dict],
    method_labels: dict[str, str],
    description: str,
    notes: tuple[str, ...] = (),
) -> dict:
    """Run every (class, method) of ``args.classes`` not yet in ``args.out / f"{name}_runs"`` (one JSON per
    run, so several processes can share the work and a stopped benchmark continues), then gather all the
    finished runs into ``{name}.json``, a Markdown table and a bar plot. ``methods`` maps a method to its
    :class:`TrainRunConfig` fields besides the common ones."""
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = args.out / f"{name}_runs"
    runs.mkdir(parents=True, exist_ok=True)
    config = {key: getattr(args, key) for key in CONFIG_KEYS}

    def load(path: Path):
        if not path.is_file():
            return None
        run = json.loads(path.read_text())
        if run["config"] != config:
            raise SystemExit(f"{path} was run with another configuration; pass another --out or delete it")
        return run

    for c in args.classes:
        cname = class_names[c]
        x_train = train_images(c, np.random.default_rng(args.seed * 1000 + c))
        is_inlier = test_labels == c
        raw_path = runs / f"{c:02d}_raw_pixels.json"
        if load(raw_path) is None:
            raw = s_con(x_train.flatten(1).numpy(), x_test.flatten(1).numpy(), args.k)
            write_json(raw_path, {"provenance": provenance(config), "config": config, "class": cname,
                                  "method": "raw_pixels",
                                  "metrics": ood_metrics(raw, is_inlier).to_dict()})
        for method, fields in methods.items():
            path = runs / f"{c:02d}_{method}.json"
            if load(path) is not None:
                continue
            cfg = TrainRunConfig(
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size=x_train.shape[-1],
                crop_scale_min=args.crop_scale_min, weight_decay=args.weight_decay, seed=args.seed * 1000 + c, **fields,
            )
            started, t0 = time.time(), time.perf_counter()
            model, history = train_contrastive_encoder(x_train, cfg, checkpoint=None, progress=args.progress,
                                                       description=f"{method} {cname}")
            train_s = time.perf_counter() - t0
            scores = s_con(model.features(x_train).numpy(), model.features(x_test).numpy(), args.k)
            metrics = {
                **ood_metrics(scores, is_inlier).to_dict(),
                "s_l2_auroc": ood_metrics(projection_norms(model, x_test), is_inlier).auroc,
                "train_seconds": train_s,
                "loss": history.loss,
            }
            write_json(path, {"provenance": provenance(asdict(cfg)), "config": config, "class": cname,
                              "method": method, "train_config": asdict(cfg),
                              "metrics": metrics, "threads": torch.get_num_threads(),
                              "started": started, "finished": time.time()})
            print(f"{cname:12s} {method:8s} AUROC {metrics['auroc']:.3f} (s_l2 {metrics['s_l2_auroc']:.3f}, "
                  f"{train_s:.0f} s)", flush=True)
    return gather(name, title, description, args.out, config, class_names, methods, method_labels, notes)


def gather(name: str, title: str, description: str, out_dir: Path, config: dict, class_names: list[str],
           methods: dict, method_labels: dict, notes: tuple[str, ...] = ()) -> dict:
    """Collect the per-run files into ``{name}.json`` (+ ``.md`` and plot when some class is complete)."""
    results: dict = {}
    train_configs: dict = {}
    train_seconds = 0.0
    threads = set()
    stamps: list[float] = []
    for path in sorted((out_dir / f"{name}_runs").glob("*.json")):
        run = json.loads(path.read_text())
        if run["config"] != config:
            continue
        results.setdefault(run["class"], {})[run["method"]] = run["metrics"]
        if "train_config" in run:
            train_configs[run["method"]] = {k: v for k, v in run["train_config"].items() if k != "seed"}
            train_seconds += run["metrics"]["train_seconds"]
            threads.add(run["threads"])
            stamps += [run["started"], run["finished"]]
    results = {c: results[c] for c in class_names if c in results}
    out = {
        "provenance": provenance(config),
        "benchmark": title,
        "description": description,
        "methods": {"raw_pixels": "s_con on the raw pixels of the same training images",
                    **{m: method_labels[m] for m in methods}},
        "config": config,
        "train_configs": train_configs,
        "results": results,
        "mean": summary(results, methods),
        "train_seconds_total": train_seconds,
        "wall_time_s": max(stamps) - min(stamps) if stamps else 0.0,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads_per_run": sorted(threads), "machine": platform.machine()},
    }
    write_json(out_dir / f"{name}.json", out)
    complete = {c: r for c, r in results.items() if all(m in r for m in ("raw_pixels", *methods))}
    if complete:
        render_one_vs_rest(out, complete, methods, method_labels, out_dir, name, notes)
    print(json.dumps(out["mean"], indent=1))
    return out


def summary(results: dict, methods) -> dict:
    """Mean metrics over the classes where every method has finished."""
    complete = [r for r in results.values() if all(m in r for m in ("raw_pixels", *methods))]
    if not complete:
        return {}
    out = {m: {key: float(np.mean([r[m][key] for r in complete])) for key in ("auroc", "aupr_in", "fpr95")}
           for m in ("raw_pixels", *methods)}
    for m in methods:
        out[m]["s_l2_auroc"] = float(np.mean([r[m]["s_l2_auroc"] for r in complete]))
    out["n_classes"] = len(complete)
    return out
