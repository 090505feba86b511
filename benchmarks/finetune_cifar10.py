"""CIFAR-10 one-vs-rest, all 10 classes: FIRM fine-tuning of an ImageNet backbone, beside the frozen backbone.

For each class c: the shipped recipe ``firm_mobilenet_v2`` (FIRM with rotations as synthetic outliers; the first
14 of 19 blocks and every BatchNorm statistic frozen, the backbone's last blocks at lr 5e-4, the head at 0.05;
32 × 32 views resized to 128 × 128; 3 epochs) fine-tunes on ``--train-images`` class-c training images (default
2,000 of the 5,000: the CPU budget). The detector is s_con (k = 2) fitted on the fine-tuned features of every
training image of c (5,000) and scores the whole test set (10,000; the 1,000 of class c are the inliers), the
protocol of ``backbone_cifar10.py``, whose frozen s_con column is shown beside.

Since the frozen blocks and their BatchNorm statistics are exactly the pretrained ones, the output of the first
14 blocks for the (unaugmented) evaluation images is the same for every class: it is computed once through
``extract_features`` (cached) and only the fine-tuned blocks run per class. The script checks this against the
whole fine-tuned encoder on a sample of images every class (the training images' are cached per class). One
JSON for all classes, written after each class; a rerun continues (and a class interrupted mid-training resumes
from its checkpoint). Processes given disjoint ``--classes`` may run side by side (each merges the others'
finished classes when it writes).

    python benchmarks/finetune_cifar10.py [--classes 0,1,...] [--train-images 2000] [--out benchmarks/results]

``--recipe firm_efficientnet_lite1`` fine-tunes EfficientNet-Lite1 the same way (its stem and first 15 blocks
frozen, the last six blocks and the head trained: the units of the stride-32 stages, as for MobileNetV2), written
as ``finetune_cifar10_efficientnet_lite1.json``.

``--train-images 5000`` is the full training split of each class; a run with any other count than the default
is written under its own name (``finetune_cifar10_n5000.json``, its runs directory beside it), and so is a run
with ``--device cuda`` (``…_cuda.json``), so the runs never mix.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _finetuned import head_features, trunk_features
from conformood.allocator import allocator_state, keep_freed_memory
from conformood.data import load_image_folder
from conformood.data.named import default_data_dir
from conformood.io import write_json, write_text
from conformood.metrics import auroc
from conformood.results import provenance
from conformood.scores import KNNCosineDetector
from conformood.train.recipes import train_contrastive_encoder
from conformood.train.run_config import find_recipe, load_train_config

RECIPE = "firm_mobilenet_v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--recipe", default=RECIPE, help="a shipped fine-tuning recipe (its encoder is the backbone)")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the fine-tuning runs (cpu, cuda); features as always")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    keep_freed_memory()  # as the conformood command does (see benchmarks/allocator.py)
    cfg0 = load_train_config(find_recipe(args.recipe), seed=args.seed)
    backbone, blocks, size = cfg0.encoder, cfg0.freeze_blocks, cfg0.backbone_input_size
    stem = "finetune_cifar10" + ("" if backbone == "mobilenet_v2" else f"_{backbone}")
    stem += "" if args.train_images == 2000 else f"_n{args.train_images}"
    stem += "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
    out_json = args.out / f"{stem}.json"
    runs = args.out / f"{stem}_runs"
    result = json.loads(out_json.read_text()) if out_json.is_file() else {"classes": {}}
    recorded = result.get("provenance", {}).get("config", {})
    if recorded and (recorded.get("train_images"), recorded.get("seed")) != (args.train_images, args.seed):
        raise SystemExit(f"{out_json} was run with {recorded}; move it away to start another configuration")
    archive = args.data_dir / "cifar10-jpg.tar.gz"
    train, test = load_image_folder(archive, split="train"), load_image_folder(archive, split="test")
    t0 = time.perf_counter()
    trunk_test = trunk_features(test.images, blocks, size, backbone)
    trunk_s = time.perf_counter() - t0
    for c in (int(x) for x in args.classes.split(",")):
        name = train.class_names[c]
        if name in result["classes"]:
            continue
        w0, c0 = time.perf_counter(), time.process_time()
        idx = np.flatnonzero(train.labels == c)
        chosen = np.sort(np.random.default_rng(args.seed + c).permutation(idx)[: args.train_images])
        cfg = load_train_config(find_recipe(args.recipe), seed=args.seed * 1000 + c)
        checkpoint = runs / f"class_{c}" / "checkpoint.safetensors"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        model, history = train_contrastive_encoder(
            train.tensor(chosen), cfg, checkpoint, resume=checkpoint.is_file(), progress=True, device=args.device,
            description=f"FIRM fine-tune {name}")
        model = model.cpu()
        train_s = time.perf_counter() - w0
        f_train = head_features(model, trunk_features(train.images[idx], blocks, size, backbone), blocks, size)
        f_test = head_features(model, trunk_test, blocks, size)
        sample = np.arange(0, len(test.images), 997)[:8]
        direct = model.features(test.tensor(sample)).numpy()
        check = float(np.abs(direct - f_test[sample]).max() / (np.abs(direct).max() + 1e-12))
        if check > 1e-4:
            raise RuntimeError(f"the cached-trunk features differ from the encoder's by {check:.2e}")
        det = KNNCosineDetector(n_neighbors=2).fit(f_train)
        score = auroc(det.score_samples(f_test), test.labels == c)
        result["classes"][name] = {"auroc": float(score), "train_images": int(chosen.size),
                                   "final_loss": float(history.loss[-1]), "train_wall_s": train_s,
                                   "wall_s": time.perf_counter() - w0, "device": args.device,
                                   "cpu_s": time.process_time() - c0, "allocator": allocator_state(),
                                   "max_relative_feature_difference_check": check}
        print(f"{name}: fine-tuned s_con AUROC {score:.4f} ({time.perf_counter() - w0:.0f} s)", flush=True)
        result.update({"benchmark": "finetune_cifar10", "recipe": args.recipe, "config": vars(cfg0) | {"seed": args.seed},
                       "trunk_features_wall_s": trunk_s, "threads": torch.get_num_threads(),
                       "provenance": provenance({"train_images": args.train_images, "seed": args.seed},
                                                {"cifar10": archive})})
        if out_json.is_file():  # another process may have finished other classes meanwhile (--classes split)
            merged = json.loads(out_json.read_text())["classes"] | result["classes"]
            result["classes"] = {n: merged[n] for n in train.class_names if n in merged}
        write_json(out_json, result)
    render(result, args.out, stem)


def _minutes(seconds: float | None) -> str:
    return "not recorded" if seconds is None else f"{seconds / 60:.1f}"


def _allocator_line(classes: dict) -> str:
    """Which memory allocator each class trained under (it changes the CPU time, never the result)."""
    def describe(state: dict | None) -> str:
        if not state:
            return "not recorded"
        if state.get("ld_preload"):
            conf = state.get("malloc_conf")
            return f"{state['ld_preload']}" + (f" (MALLOC_CONF={conf})" if conf else "")
        if state.get("keep_freed_memory"):
            return "glibc, freed memory kept"
        return "glibc's default (each large block mapped afresh every step, which costs CPU time)"

    groups: dict[str, list[str]] = {}
    for name, record in classes.items():
        groups.setdefault(describe(record.get("allocator")), []).append(name)
    return "Memory allocator (CPU time only; `benchmarks/allocator.py`): " + "; ".join(
        f"{', '.join(names)}: {what}" for what, names in groups.items()) + "."


def render(result: dict, out: Path, stem: str = "finetune_cifar10") -> None:
    """The Markdown table of benchmark 5.1 (every row side by side: raw pixels, from-scratch FIRM, the frozen
    backbone's three scores, the fine-tuned backbone) and the bar plot."""
    def read(name: str) -> dict:
        path = out / name
        return json.loads(path.read_text()) if path.is_file() else {}

    backbone = result["config"].get("encoder", "mobilenet_v2")
    pixels = read("backbone_cifar10.json").get("classes", {})
    frozen = read("backbone_cifar10.json" if backbone == "mobilenet_v2" else f"backbone_cifar10_{backbone}.json"
                  ).get("classes", {})
    scratch = read("cifar10.json").get("results", {})
    names = list(result["classes"])
    tuned = [result["classes"][n]["auroc"] for n in names]
    base = [frozen.get(n, {}).get(f"{backbone} s_con", float("nan")) for n in names]
    columns = {
        "raw pixels": [pixels.get(n, {}).get("raw_pixels s_con", float("nan")) for n in names],
        "FIRM from scratch (small CNN)": [scratch.get(n, {}).get("firm", {}).get("auroc", float("nan")) for n in names],
        "frozen s_con": base,
        "frozen Mahalanobis": [frozen.get(n, {}).get(f"{backbone} mahalanobis", float("nan")) for n in names],
        "frozen s_center": [frozen.get(n, {}).get(f"{backbone} s_center", float("nan")) for n in names],
        "**FIRM fine-tuned s_con**": tuned,
    }
    config = result["config"]
    if backbone != "mobilenet_v2":  # the shipped MobileNetV2 recipe's run on as many images, beside
        n = result["classes"][names[0]]["train_images"]
        other = read("finetune_cifar10.json" if n == 2000 else f"finetune_cifar10_n{n}.json").get("classes", {})
        columns["MobileNetV2 FIRM fine-tuned"] = [other.get(c, {}).get("auroc", float("nan")) for c in names]
    first = result["classes"][names[0]]
    flag = "" if result["recipe"] == RECIPE else f" --recipe {result['recipe']}"
    flag += "" if first["train_images"] == 2000 else f" --train-images {first['train_images']}"
    flag += "" if first.get("device", "cpu") == "cpu" else f" --device {first['device']}"
    cpu = sum(r["cpu_s"] or 0.0 for r in result["classes"].values()) / 60  # None: trained by an earlier process
    lines = [
        f"# CIFAR-10 one-vs-rest: FIRM fine-tuning of the pretrained {backbone}, beside every other row",
        "",
        f"Fine-tuned: recipe `{result['recipe']}` (FIRM, rotations as synthetic outliers, first "
        f"{config['freeze_blocks']} units and BatchNorm frozen, backbone lr {config['backbone_lr']:g}, "
        f"{config['epochs']} epochs, {config['backbone_input_size']} × {config['backbone_input_size']}) on "
        f"{result['classes'][names[0]]['train_images']} training images of the class; s_con (k = 2) fitted on all "
        "5,000 training images of the class, scored on the full test set (10,000). Frozen rows and raw pixels: the "
        "same protocol without training ([backbone_cifar10.md](backbone_cifar10.md)"
        + ("" if backbone == "mobilenet_v2" else f", [backbone_cifar10_{backbone}.md](backbone_cifar10_{backbone}.md)")
        + "); from scratch: the small CNN, "
        "5 epochs, s_con k = 5 ([cifar10.md](cifar10.md)).",
        "",
        f"Reproduce: `python benchmarks/finetune_cifar10.py{flag}` (CPU {cpu:.0f} min for the fine-tuned classes below on "
        f"{result['threads']} thread(s), plus the frozen blocks' features of the test images, computed once "
        f"({result['trunk_features_wall_s'] / 60:.0f} min wall in the run that wrote this, 0 when cached)).",
        "",
        _allocator_line(result["classes"]),
        "",
        "| class | " + " | ".join(columns) + " | fine-tuned − frozen | CPU min |",
        "|---|" + "---|" * (len(columns) + 2),
    ]
    for i, n in enumerate(names):
        lines.append(f"| {n} | " + " | ".join(f"{v[i]:.4f}" for v in columns.values())
                     + f" | {tuned[i] - base[i]:+.4f} | {_minutes(result['classes'][n]['cpu_s'])} |")
    lines += [f"| **mean ({len(names)} classes)** | " + " | ".join(f"**{np.nanmean(v):.4f}**" for v in columns.values())
              + f" | **{np.mean(tuned) - np.nanmean(base):+.4f}** | |", "",
              "Goals: frozen ≥ 0.85 mean AUROC; fine-tuned ≥ 0.92, stretch 0.943 (CSI, ResNet-18 trained from scratch "
              "on GPUs). The FIRM paper's Table 4 reports only means over the ten classes: FIRM 0.934, NT-Xent 0.922 "
              "(ResNet-18, 2,000 epochs on GPUs).", "", f"![per-class AUROC]({stem}.png)", ""]
    write_text(out / f"{stem}.md", "\n".join(lines))
    from conformood.report.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = np.arange(len(names))
    ax.bar(x - 0.2, base, 0.4, label="frozen s_con")
    ax.bar(x + 0.2, tuned, 0.4, label="FIRM fine-tuned s_con")
    ax.axhline(0.92, color="grey", ls=":", lw=1, label="goal: mean ≥ 0.92")
    ax.set_xticks(x, names, rotation=30, fontsize=8)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("AUROC")
    ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    save_figure(fig, out / f"{stem}.png")


if __name__ == "__main__":
    main()
