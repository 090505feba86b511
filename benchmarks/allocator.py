"""CPU speed with glibc's default malloc against keeping freed memory (``conformood.allocator``), side by side.

Each cell runs in a fresh child process, the two settings alternating, ``--repeats`` times each (best kept):

* ``fine-tune``: the shipped recipe ``firm_mobilenet_v2`` (the CIFAR-10 fine-tuning benchmark's: FIRM with
  rotations, first 14 blocks and BatchNorm frozen, 32 × 32 views at 128 × 128, batch 64) through
  ``train_contrastive_encoder`` for ``--steps`` steps after one warm-up step (the timed call also builds the
  model, in both settings alike);
* ``extract``: ``extract_features`` of the ImageNet MobileNetV2 on ``--images`` CIFAR-10 test images at 128 px.

Per cell: seconds per step (images/s for extraction), the minor page faults per step (each a 4 KiB page the
kernel had to map and zero) and the peak resident memory. Threads: ``--threads`` (default 1, as the fine-tuning
benchmark runs). Writes ``allocator.json`` and ``allocator.md``.

    python benchmarks/allocator.py [--steps 6] [--repeats 2] [--threads 1] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conformood.io import write_json, write_text
from conformood.results import environment, provenance

MODES = ("glibc default", "keep freed memory")


def child(mode: str, cell: str, args: argparse.Namespace) -> dict:
    """One cell in this (fresh) process."""
    import resource

    from conformood import allocator

    if mode == MODES[1] and not allocator.keep_freed_memory():
        raise SystemExit("keeping freed memory needs glibc")
    import numpy as np
    import torch

    from _memory import status_kb
    from conformood.data import load_image_folder
    from conformood.models import extract_features, get_backbone
    from conformood.train.recipes import train_contrastive_encoder
    from conformood.train.run_config import find_recipe, load_train_config

    torch.set_num_threads(args.threads)
    test = load_image_folder(args.data_dir / "cifar10-jpg.tar.gz", split="test")

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    if cell == "fine-tune":
        cfg = load_train_config(find_recipe("firm_mobilenet_v2"), seed=0)
        cfg.epochs = 1
        x = test.tensor(np.arange(cfg.batch_size * args.steps))
        train_contrastive_encoder(x[: cfg.batch_size], cfg, None, progress=False)  # warm-up step
        f0, t0 = faults(), time.perf_counter()
        train_contrastive_encoder(x, cfg, None, progress=False)
        seconds, units = time.perf_counter() - t0, args.steps
    else:
        backbone = get_backbone("mobilenet_v2", input_size=128)
        batch = test.images[: args.images]
        extract_features(backbone, batch[:128], batch_size=128, progress=False, device="cpu")  # warm-up
        f0, t0 = faults(), time.perf_counter()
        extract_features(backbone, batch, batch_size=128, progress=False, device="cpu")
        seconds, units = time.perf_counter() - t0, -(-len(batch) // 128)
    return {"seconds": seconds, "units": units, "faults_per_unit": (faults() - f0) / units,
            "peak_rss_mb": status_kb("VmHWM") / 1024, "allocator": environment()["allocator"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CELL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.data_dir is None:
        from conformood.data.named import default_data_dir

        args.data_dir = default_data_dir().resolve()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args)))
        return
    env = {k: v for k, v in os.environ.items() if k not in {"LD_PRELOAD", "MALLOC_CONF"}}
    runs: dict[str, dict[str, list[dict]]] = {cell: {m: [] for m in MODES} for cell in ("fine-tune", "extract")}
    for cell in runs:
        for _ in range(args.repeats):
            for mode in MODES:
                cmd = [sys.executable, __file__, "--child", mode, cell, "--steps", str(args.steps), "--images",
                       str(args.images), "--threads", str(args.threads), "--data-dir", str(args.data_dir)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode:
                    raise SystemExit(out.stderr.strip().splitlines()[-1])
                runs[cell][mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(cell, mode, runs[cell][mode][-1]["seconds"], flush=True)
    cells = {}
    for cell, by_mode in runs.items():
        best = {m: min(r, key=lambda d: d["seconds"]) for m, r in by_mode.items()}
        cells[cell] = {"runs": by_mode, "best": best,
                       "speed_up": best[MODES[0]]["seconds"] / best[MODES[1]]["seconds"],
                       "peak_rss_ratio": best[MODES[1]]["peak_rss_mb"] / best[MODES[0]]["peak_rss_mb"]}
    result = {"benchmark": "allocator", "cells": cells, "environment": environment(),
              "provenance": provenance(vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)})}
    write_json(args.out / "allocator.json", result)
    lines = ["# CPU speed: glibc's default malloc against keeping freed memory", "",
             f"Fresh process per cell, {args.threads} thread(s), best of {args.repeats}; the settings alternate. "
             "Fine-tune: recipe `firm_mobilenet_v2` (FIRM, 14 blocks frozen, batch 64, 128 px), "
             f"{args.steps} steps after a warm-up step. Extract: `extract_features`, {args.images} CIFAR-10 images "
             "at 128 px in batches of 128.", "",
             "| cell | setting | s per step (batch) | minor page faults per step | peak RSS (MB) |",
             "|---|---|---|---|---|"]
    for cell, c in cells.items():
        for mode in MODES:
            b = c["best"][mode]
            lines.append(f"| {cell} | {mode} | {b['seconds'] / b['units']:.2f} | {b['faults_per_unit']:,.0f} | "
                         f"{b['peak_rss_mb']:,.0f} |")
    lines += [""] + [f"- {cell}: keeping freed memory is **{c['speed_up']:.2f}×** as fast, with "
                     f"{c['peak_rss_ratio']:.2f}× the peak resident memory." for cell, c in cells.items()]
    lines += ["", "The `conformood` command keeps freed memory unless `CONFORMOOD_KEEP_FREED_MEMORY=0`.", "",
              "Reproduce: `python benchmarks/allocator.py`", ""]
    write_text(args.out / "allocator.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
