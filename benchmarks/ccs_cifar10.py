"""Contrastive conformal sets on real embeddings: CIFAR-10 features of a conformood encoder (Table 3 style),
and OOD detection against the Tiny-ImageNet pool with the eq. 23 score next to kNN and Mahalanobis.

Pipeline (``contrastive-conformal-sets.md`` §5 and app. B, scaled to a CPU):

1. an NT-Xent (SimCLR) SmallCNN encoder is trained on ``--train-images`` CIFAR-10 training images without
   labels (or loaded from ``--checkpoint``);
2. its backbone features (L2-normalised) of a labelled training subset fit the learned sets (supervised
   positives/negatives, k = 20, SGD lr 0.1, momentum 0.9, weight decay 5e-4, 30 epochs, cosine, clip 1,
   steepness 7, λ = 0.05); the CIFAR-10 test split is cut in half — calibration (one positive per anchor)
   and evaluation (20 positives and 20 negatives per anchor);
3. OOD: evaluation half (ID) vs Tiny-ImageNet images; scores: eq. 23 (``neg``) and its §6 variant
   (``neg-pos``) for every set, kNN cosine (k = 5) and class-conditional Mahalanobis on the same features.

Writes ``ccs_cifar10.json`` and ``ccs_cifar10.md``. No targets: numbers only.

    python benchmarks/ccs_cifar10.py [--train-images 5000] [--epochs 10] [--widths 16 32 64] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from conformood.allocator import keep_freed_memory
from conformood.results import provenance


def _features(model, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """L2-normalised encoder features (:func:`conformood.models.encode`), float32."""
    from conformood.data.arrays import to_float_images
    from conformood.models import encode

    f = encode(model.encoder, to_float_images(images), batch_size=batch)
    return torch.nn.functional.normalize(f, dim=1).numpy().astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--train-images", type=int, default=5000)
    ap.add_argument("--widths", type=int, nargs=3, default=(16, 32, 64))
    ap.add_argument("--set-train-images", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--set-epochs", type=int, default=30)
    ap.add_argument("--rows", nargs="*", default=None, help="only these rows (labels as in the table)")
    ap.add_argument("--ood-images", type=int, default=5000)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--splits", type=int, default=5, help="random calibration/evaluation halves of the test split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", type=Path, default=None, help="reuse a trained model.safetensors")
    ap.add_argument("--backbone", default=None, help="a registered pretrained backbone (mobilenet_v2), frozen, "
                                                     "instead of training an encoder: the CCS paper's own setting")
    ap.add_argument("--input-size", type=int, default=128, help="--backbone: its input size")
    ap.add_argument("--encoder", type=Path, default=None,
                    help="model.safetensors of a fine-tuned MobileNetV2 (conformood train --config clp_mobilenet_v2): "
                         "its features instead of training an encoder; results go to ccs_cifar10_finetuned.*")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--plot", action="store_true", help="only redraw ccs_cifar10_features.png from the JSONs")
    args = ap.parse_args()
    keep_freed_memory()  # as the conformood command does (see benchmarks/allocator.py)
    if args.plot:
        plot_features(args.out)
        return
    torch.set_num_threads(1)

    from conformood.conformal import ConformalSetDetector
    from conformood.conformal.sets.families import SET_FAMILIES, calibrate_labelled
    from conformood.conformal.sets.sampling import evaluate_set
    from conformood.conformal.sets.training import train_conformal_set
    from conformood.data.image_folder import load_image_folder
    from conformood.experiments.ccs import ROWS
    from conformood.io import save_state, write_json, write_text
    from conformood.metrics import auroc, fpr_at_95_tpr
    from conformood.scores import (
        KNNCosineDetector,
        MahalanobisDetector,
    )
    from conformood.train.recipes import load_trained_model, train_contrastive_encoder
    from conformood.train.run_config import TrainRunConfig

    t0 = time.perf_counter()
    archive = args.data_dir / "cifar10-jpg.tar.gz"
    train = load_image_folder(archive, split="train")
    test = load_image_folder(archive, split="test")
    with np.load(args.data_dir / "tinyimagenet_oe_32.npz", allow_pickle=False) as f:
        ood_raw = f["x"]
    rng = np.random.default_rng(args.seed)
    enc_idx = rng.permutation(len(train.labels))[: args.train_images]
    cfg = TrainRunConfig(
        data="cifar10", objective="ntxent", epochs=args.epochs, batch_size=256, lr=0.3, temperature=0.2,
        image_size=32, crop_scale_min=0.3, flip=True, widths=tuple(args.widths), projection_dim=64, seed=args.seed,
    )
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder_info: dict = {}
    if args.backbone is not None:
        from conformood.models import extract_features, get_backbone
        from conformood.models.backbones import cache_dir

        backbone = get_backbone(args.backbone, input_size=args.input_size)
        encoder_info = {"backbone": args.backbone, "input_size": args.input_size, "frozen": True,
                        "weights_digest": backbone.weights_digest}

        def features_of(images: np.ndarray) -> np.ndarray:
            f = torch.from_numpy(extract_features(backbone, images, cache=cache_dir() / "features"))
            return torch.nn.functional.normalize(f, dim=1).numpy().astype(np.float32)
    elif args.encoder is not None:
        from _finetuned import finetuned_features
        from conformood.train.recipes import load_trained_model

        tuned, tuned_config = load_trained_model(args.encoder)
        encoder_info = {"fine_tuned": str(args.encoder), "objective": tuned_config.get("objective"),
                        "encoder_options": tuned_config.get("encoder_options")}

        def features_of(images: np.ndarray) -> np.ndarray:
            f = torch.from_numpy(finetuned_features(tuned, tuned_config, images))
            return torch.nn.functional.normalize(f, dim=1).numpy().astype(np.float32)
    elif args.checkpoint is not None:
        model, _ = load_trained_model(args.checkpoint)
        encoder_info["loaded"] = str(args.checkpoint)
    else:
        t = time.perf_counter()
        model, history = train_contrastive_encoder(train.tensor(enc_idx), cfg, None, progress=True)
        encoder_info = {
            "train_images": int(args.train_images),
            "epochs": args.epochs,
            "seconds": time.perf_counter() - t,
            "loss_per_epoch": list(history.loss),
        }
        save_state(out_dir / "ccs_cifar10_encoder.safetensors", model.state_dict(),
                   {"in_channels": 3, "widths": list(cfg.widths), "projection_dim": cfg.projection_dim,
                    "image_size": 32, "seed": args.seed, "data": "cifar10"}, kind="ContrastiveModel")
    if args.backbone is None and args.encoder is None:
        def features_of(images: np.ndarray) -> np.ndarray:
            return _features(model, images)
    set_idx = rng.permutation(len(train.labels))[: args.set_train_images]
    feat_train = features_of(train.images[set_idx])
    y_train = train.labels[set_idx]
    feat_test = features_of(test.images)
    ood_images = ood_raw[rng.permutation(len(ood_raw))[: args.ood_images]]  # (n, 32, 32, 3) uint8
    feat_ood = features_of(ood_images)
    d = feat_train.shape[1]
    halves = [np.random.default_rng(args.seed + 100 + s).permutation(len(test.labels)) for s in range(args.splits)]
    halves = [(o[: len(o) // 2], o[len(o) // 2 :]) for o in halves]

    def stat(values):
        a = np.asarray(values, dtype=np.float64)
        return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}

    # Resumable: every finished row goes to <stem>_partial.json (with the settings it was run under) and a
    # rerun with the same settings skips it; a finished <stem>.json is extended the same way (--rows).
    stem = ("ccs_cifar10" if args.backbone is None else f"ccs_cifar10_{args.backbone}") if args.encoder is None \
        else "ccs_cifar10_finetuned"
    partial_path = out_dir / f"{stem}_partial.json"
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("out", "data_dir", "rows", "plot")}
    table, ood = {}, {}
    finished = out_dir / f"{stem}.json"
    for source in (partial_path, finished):  # an interrupted run, or a finished one extended by --rows
        if not source.exists():
            continue
        saved = json.loads(source.read_text())
        saved.setdefault("table", saved.get("table3", {}))
        saved.setdefault("ood", saved.get("ood_vs_tinyimagenet", {}))
        if saved.get("settings") == settings:
            table, ood = saved["table"], saved["ood"]
            print(f"resuming: {len(table)} rows done ({source.name})", flush=True)
            break
    for label, family, objective in ROWS:
        if label in table or (args.rows and label not in args.rows):
            continue
        t = time.perf_counter()
        cset = SET_FAMILIES.create(family, dim=d, alpha=args.alpha)
        best = None
        if objective is not None:
            res = train_conformal_set(
                cset, feat_train, y_train, objective=objective, pairs_per_anchor=20, epochs=args.set_epochs, lr=0.1, momentum=0.9,
                weight_decay=5e-4, clip=1.0, lam=0.05, steepness=7.0, seed=args.seed, progress=True,
            )
            best = res.best_epoch
        cells = {"coverage": [], "exclusion": [], "log_volume": []}
        scores = {"neg": [], "neg-pos": []}
        for s, (cal, ev) in enumerate(halves):
            calibrate_labelled(cset, feat_test[cal], test.labels[cal], seed=args.seed + 1 + s)
            r = evaluate_set(cset, feat_test[ev], test.labels[ev], pairs_per_anchor=20, seed=args.seed + 2 + s)
            for key in cells:
                cells[key].append(r[key])
            is_in = np.r_[np.ones(len(ev), bool), np.zeros(len(feat_ood), bool)]
            # Both variants come from the same two exclusion rates (eq. 23 and its §6 variant): computed once.
            det = ConformalSetDetector(cset, n_samples=20, seed=args.seed + s).fit(feat_train, y_train)
            (neg_id, pos_id), (neg_ood, pos_ood) = det.exclusion_rates(feat_test[ev]), det.exclusion_rates(feat_ood)
            for variant, sc in (("neg", np.r_[neg_id, neg_ood]), ("neg-pos", np.r_[neg_id - pos_id, neg_ood - pos_ood])):
                scores[variant].append((auroc(sc, is_in), fpr_at_95_tpr(sc, is_in)))
        table[label] = {k: stat(v) for k, v in cells.items()} | {"best_epoch": best, "seconds": time.perf_counter() - t}
        for variant, vals in scores.items():
            ood[f"{label} [{variant}]"] = {"auroc": stat([v[0] for v in vals]), "fpr95": stat([v[1] for v in vals])}
        write_json(partial_path, {"settings": settings, "table": table, "ood": ood})
        print(label, table[label], flush=True)
    for name, det in (("kNN cosine (k=5)", KNNCosineDetector(n_neighbors=5)), ("Mahalanobis (class-conditional)", MahalanobisDetector())):
        det.fit(feat_train, y_train)
        vals = []
        for _cal, ev in halves:
            is_in = np.r_[np.ones(len(ev), bool), np.zeros(len(feat_ood), bool)]
            sc = np.r_[det.score_samples(feat_test[ev]), det.score_samples(feat_ood)]
            vals.append((auroc(sc, is_in), fpr_at_95_tpr(sc, is_in)))
        ood[name] = {"auroc": stat([v[0] for v in vals]), "fpr95": stat([v[1] for v in vals])}

    payload = {
        "provenance": provenance(vars(args)),
        "encoder": encoder_info | ({"config": dict(vars(cfg))} if args.backbone is None and args.encoder is None else {}),
        "feature_dim": d,
        "alpha": args.alpha,
        "sizes": {"set_training": len(y_train), "calibration": len(halves[0][0]), "evaluation": len(halves[0][1]),
                  "ood": len(feat_ood), "splits": args.splits},
        "settings": settings,
        "table3": table,
        "ood_vs_tinyimagenet": ood,
        "seconds": time.perf_counter() - t0,
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
    }
    write_json(out_dir / f"{stem}.json", payload)
    lines = [
        "# Contrastive conformal sets on CIFAR-10 embeddings (Table 3 style) and OOD vs Tiny-ImageNet",
        "",
        (f"Encoder: SmallCNN {tuple(args.widths)} trained with NT-Xent on {args.train_images} CIFAR-10 training images ({args.epochs} epochs, CPU); "
         if args.backbone is None and args.encoder is None else
         f"Encoder: the frozen ImageNet {args.backbone} ({args.input_size} × {args.input_size} input, no training); " if args.encoder is None else
         f"Encoder: ImageNet MobileNetV2 fine-tuned with the {encoder_info['objective']} recipe ({args.encoder}); ")
        + f"{d}-d L2-normalised backbone features. Reproduce: `python benchmarks/ccs_cifar10.py"
        + ("" if args.backbone is None else f" --backbone {args.backbone} --input-size {args.input_size}")
        + ("" if args.encoder is None else f" --encoder {args.encoder}")
        + ("" if args.set_epochs == 30 else f" --set-epochs {args.set_epochs}")
        + f"`. Sets trained on {len(y_train)} labelled training features ({args.set_epochs} epochs), calibrated on "
        f"{len(halves[0][0])} test images (one positive each), evaluated on the other {len(halves[0][1])} (20 positives and 20 "
        f"negatives each); mean ± std over {args.splits} random halvings of the test split; α = {args.alpha}. The "
        "ellipsoid follows the paper's §5: Σ from a random half of the calibration images, q̂ from pairs within the other half.",
        "",
        "| Method | Coverage | Exclusion ↑ | LogVol ↓ |",
        "|---|---|---|---|",
    ]
    for label, r in table.items():
        lines.append(
            f"| {label} | {100 * r['coverage']['mean']:.1f} ± {100 * r['coverage']['std']:.1f}% "
            f"| {100 * r['exclusion']['mean']:.1f} ± {100 * r['exclusion']['std']:.1f}% "
            f"| {r['log_volume']['mean']:.1f} ± {r['log_volume']['std']:.1f} |"
        )
    lines += ["", "OOD: CIFAR-10 test (ID) vs Tiny-ImageNet pool.", "", "| Score | AUROC ↑ | FPR95 ↓ |", "|---|---|---|"]
    for name, r in ood.items():
        lines.append(
            f"| {name} | {100 * r['auroc']['mean']:.1f} ± {100 * r['auroc']['std']:.1f} "
            f"| {100 * r['fpr95']['mean']:.1f} ± {100 * r['fpr95']['std']:.1f} |"
        )
    lines += ["", "Every kind of features side by side: ![exclusion and eq. 23 AUROC](ccs_cifar10_features.png)"]
    lines += ["", f"Wall time of the last invocation {payload['seconds']:.0f} s (rows resumed from an earlier one keep their own `seconds` in the JSON).", ""]
    write_text(out_dir / f"{stem}.md", "\n".join(lines))
    partial_path.unlink()
    plot_features(out_dir)
    print("\n".join(lines))


def plot_features(out: Path) -> None:
    """ccs_cifar10_features.png: exclusion (at 95 % coverage) and the eq. 23 OOD AUROC of every set, for each
    kind of features that has a JSON (from-scratch encoder, frozen backbone, fine-tuned backbone)."""
    from conformood.experiments.ccs import ROWS
    from conformood.report.plots import pyplot, save_figure

    runs = {label: json.loads((out / f"{stem}.json").read_text()) for label, stem in (
        ("small CNN, NT-Xent from scratch", "ccs_cifar10"), ("frozen ImageNet MobileNetV2", "ccs_cifar10_mobilenet_v2"),
        ("MobileNetV2, CLP recipe fine-tuned", "ccs_cifar10_finetuned")) if (out / f"{stem}.json").is_file()}
    if not runs:
        return
    rows = [label for label, _, _ in ROWS if any(label in r["table3"] for r in runs.values())]
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(runs)
    x = np.arange(len(rows))
    for i, (name, r) in enumerate(runs.items()):
        excl = [100 * r["table3"][m]["exclusion"]["mean"] if m in r["table3"] else np.nan for m in rows]
        ood = [100 * r["ood_vs_tinyimagenet"][f"{m} [neg-pos]"]["auroc"]["mean"]
               if f"{m} [neg-pos]" in r["ood_vs_tinyimagenet"] else np.nan for m in rows]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, excl, width, label=name)
        bx.bar(x + (i - (len(runs) - 1) / 2) * width, ood, width, label=name)
    for a_, title in ((ax, "negatives excluded, % (coverage held at 95 %)"),
                      (bx, "OOD AUROC vs Tiny-ImageNet, eq. 23 minus positive exclusion")):
        a_.set_xticks(x, [m.replace("Conformal Ball", "Ball").replace("Mahalanobis Ellipsoid", "Ellipsoid")
                          .replace(" (", "\n(") for m in rows], fontsize=7)
        a_.set_title(title, fontsize=9)
    bx.axhline(50, color="grey", ls=":", lw=1)
    bx.set_ylim(0, 100)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, out / "ccs_cifar10_features.png")


if __name__ == "__main__":
    main()
