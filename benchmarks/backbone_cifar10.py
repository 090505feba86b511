"""CIFAR-10 one-vs-rest, all 10 classes, with a frozen ImageNet MobileNetV2 against raw pixels.

For each class c: the detector is fitted on every training image of c (5,000) and scores the whole test set
(10,000 images; the 1,000 of class c are the inliers). Rows:

* ``raw_pixels``: s_con (k = 2) on the 3,072 raw pixel values;
* ``mobilenet_v2`` frozen (torchvision's ImageNet weights, ``make weights``), 128 × 128 input, pooled 1,280-d
  features, with s_con (k = 2), Mahalanobis (one class, ridge 1e-3) and s_center.

The FIRM paper's Table 4 gives only the mean over the ten classes (FIRM 93.4, NT-Xent 92.2, ResNet-18 trained for
2,000 epochs on GPUs); the committed from-scratch FIRM run (small CNN, ``benchmarks/results/cifar10.json``)
covers classes 0, 3 and 8. Features are extracted once through ``extract_features`` (cached in
``$CONFORMOOD_CACHE/features``); the result JSON is written after every class, and a rerun continues.

    python benchmarks/backbone_cifar10.py [--backbone mobilenet_v2] [--input-size 128] [--out benchmarks/results]

Another backbone (``--backbone efficientnet_lite0``) writes ``backbone_cifar10_<name>.json`` / ``.md`` with the
same rows under its name (raw pixels are in the MobileNetV2 table and not repeated).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from conformood.allocator import keep_freed_memory
from conformood.data import load_image_folder
from conformood.data.named import default_data_dir
from conformood.io import write_json
from conformood.metrics import auroc
from conformood.models import extract_features, get_backbone
from conformood.models.backbones import cache_dir
from conformood.results import provenance
from conformood.scores import CenterDetector, KNNCosineDetector, MahalanobisDetector

PAPER_TABLE4_MEAN = {"FIRM (ResNet-18, 2,000 epochs)": 0.934, "NT-Xent": 0.922, "CSI": 0.943}
def rows(backbone: str) -> tuple[str, ...]:
    raw = ("raw_pixels s_con",) if backbone == "mobilenet_v2" else ()
    return (*raw, f"{backbone} s_con", f"{backbone} mahalanobis", f"{backbone} s_center")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    keep_freed_memory()  # as the conformood command does (see benchmarks/allocator.py)
    stem = "backbone_cifar10" + ("" if args.backbone == "mobilenet_v2" else f"_{args.backbone}")
    out_json = args.out / f"{stem}.json"
    result = json.loads(out_json.read_text()) if out_json.is_file() else {"classes": {}}
    archive = args.data_dir / "cifar10-jpg.tar.gz"
    train, test = load_image_folder(archive, split="train"), load_image_folder(archive, split="test")
    t0, c0 = time.perf_counter(), time.process_time()
    backbone = get_backbone(args.backbone, input_size=args.input_size)
    cache = cache_dir() / "features"
    f_train = extract_features(backbone, train.images, cache=cache)
    f_test = extract_features(backbone, test.images, cache=cache)
    extract_s = time.perf_counter() - t0
    raw_train = train.images.reshape(len(train.images), -1).astype(np.float32)
    raw_test = test.images.reshape(len(test.images), -1).astype(np.float32)
    b = args.backbone
    for c, name in enumerate(train.class_names):
        if name in result["classes"]:
            continue
        own = train.labels == c
        inlier = test.labels == c
        detectors = {
            **({"raw_pixels s_con": (KNNCosineDetector(n_neighbors=2).fit(raw_train[own]), raw_test)}
               if b == "mobilenet_v2" else {}),
            f"{b} s_con": (KNNCosineDetector(n_neighbors=2).fit(f_train[own]), f_test),
            f"{b} mahalanobis": (MahalanobisDetector(solver="ridge", ridge=1e-3).fit(
                f_train[own], np.zeros(int(own.sum()), dtype=int)), f_test),
            f"{b} s_center": (CenterDetector().fit(f_train[own]), f_test),
        }
        result["classes"][name] = {row: float(auroc(det.score_samples(x), inlier))
                                   for row, (det, x) in detectors.items()}
        print(name, {k: round(v, 4) for k, v in result["classes"][name].items()}, flush=True)
        result["mean"] = {row: float(np.mean([r[row] for r in result["classes"].values()])) for row in rows(b)}
        result.update({
            "benchmark": "backbone_cifar10", "backbone": b, "input_size": args.input_size, "n_train_per_class": int(own.sum()),
            "n_test": len(test.labels), "paper_table4_mean": PAPER_TABLE4_MEAN,
            "extract_wall_s": extract_s, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "provenance": provenance({"backbone": b, "input_size": args.input_size, "data_dir": str(args.data_dir)},
                                     {"cifar10": archive}),
        })
        write_json(out_json, result)
    render(result, args.out, stem)


def render(result: dict, out: Path, stem: str = "backbone_cifar10") -> None:
    from conformood.report import pyplot, save_figure

    names = list(result["classes"])
    b = result.get("backbone", "mobilenet_v2")
    shown = rows(b)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 5.2))
    width = 0.2
    for j, row in enumerate(shown):
        ax.bar(np.arange(len(names)) + (j - (len(shown) - 1) / 2) * width, [result["classes"][n][row] for n in names], width,
               label=f"{row} (mean {result['mean'][row]:.3f})")
    ax.axhline(0.934, color="k", ls="--", lw=1, label="FIRM paper, Table 4 mean (0.934)")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("AUROC (one class in-distribution)")
    ax.set_title(f"CIFAR-10 one-vs-rest: frozen ImageNet {b} ({result['input_size']}² input)")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    save_figure(fig, out / f"{stem}.png")
    lines = ["# CIFAR-10 one-vs-rest with a frozen pretrained backbone", "",
             f"Every training image of the class ({result['n_train_per_class']}), the full test set "
             f"({result['n_test']}); {b} with its ImageNet weights at {result['input_size']} × "
             f"{result['input_size']}, no training. Reproduce: `python benchmarks/backbone_cifar10.py --backbone {b}"
             f" --input-size {result['input_size']}` (CPU "
             f"{result['cpu_s'] / 60:.0f} min, of which feature extraction {result['extract_wall_s'] / 60:.0f} min "
             "wall on a cold cache).", "",
             "| class | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(f"{result['classes'][n][r]:.4f}" for r in shown) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{result['mean'][r]:.4f}**" for r in shown) + " |")
    lines += ["", "Paper reference (FIRM Table 4, mean over classes, ResNet-18 trained from scratch on GPUs): "
              + ", ".join(f"{k} {v:.3f}" for k, v in result["paper_table4_mean"].items()) + ".", "",
              f"![per-class AUROC]({stem}.png)", ""]
    (out / f"{stem}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
