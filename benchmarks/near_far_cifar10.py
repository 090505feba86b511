"""Near and far OOD with CIFAR-10 (all 10 classes, labelled) as the in-distribution, on pretrained features.

In-distribution: ``--train-per-class`` training images per class fit the detectors; the CIFAR-10 test split is
cut in half at random: calibration (the conformal threshold at level α) and ID test. Out-of-distribution:

* near: the Tiny-ImageNet pool (10,100 images);
* far: Fashion-MNIST (test split, 10,000) and scikit-learn's digits (1,797), converted to 32 × 32 RGB.

Each OOD set is cut in half at random: half A is used only as the extra class of that pair's CLP ensemble (the
outlier-exposure / calibration half), half B only for test.

Features: the frozen ImageNet MobileNetV2 (``make weights``) at 128 × 128 through ``extract_features`` (cached).
Scores: the class-conditional Gaussian (CLP eq. 2) and s_con (kNN cosine, k = 5). For each OOD set: AUROC,
FPR@95TPR and the realised false-alarm rate on ID test images at α (with the fraction of OOD flagged). CLP
(eq. 4), per pair as in the CLP paper: an ensemble of ``--members`` MLPs trained on the features of D_in ∪ half A
of that OOD set with the extended label set (11 classes); the pair's CLP is the log of the mean probability that
the ensemble puts on the ID classes for half B (higher = more confusable with the in-distribution: near should be
higher than far).

    python benchmarks/near_far_cifar10.py [--train-per-class 1000] [--members 5] [--alpha 0.05]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _finetuned import finetuned_features
from conformood.allocator import keep_freed_memory
from conformood.conformal import ConformalDetector
from conformood.data import conform_images, load_digits_dataset, load_fashion_mnist, load_image_folder
from conformood.data.arrays import ImageArrays
from conformood.data.named import default_data_dir
from conformood.io import read_npz, write_json, write_text
from conformood.metrics import auroc, decision_metrics, fpr_at_95_tpr
from conformood.metrics.clp import confusion_log_probability, ensemble_predict
from conformood.models import extract_features, get_backbone
from conformood.models.backbones import cache_dir
from conformood.results import provenance
from conformood.scores import get_detector
from conformood.train import fit_clp_ensemble
from conformood.train.recipes import load_trained_model


def rgb32(data: ImageArrays) -> np.ndarray:
    """uint8 (n, 3, 32, 32): gray repeated to RGB, bilinear resize to 32 × 32."""
    return np.round(conform_images(data, (3, 32, 32)).images * 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--member-epochs", type=int, default=30)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--encoder", type=Path, default=None,
                    help="model.safetensors of a fine-tuned MobileNetV2 (conformood train --config clp_mobilenet_v2) "
                         "instead of the frozen backbone; results go to near_far_cifar10_finetuned.*")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--render", action="store_true", help="only rewrite the Markdown and figure from the JSON")
    args = ap.parse_args()
    keep_freed_memory()  # as the conformood command does (see benchmarks/allocator.py)
    if args.render:
        stem = "near_far_cifar10" if args.encoder is None else "near_far_cifar10_finetuned"
        print(render(json.loads((args.out / f"{stem}.json").read_text()), args.out, stem))
        return
    t0, c0 = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(args.seed)
    archive = args.data_dir / "cifar10-jpg.tar.gz"
    train, test = load_image_folder(archive, split="train"), load_image_folder(archive, split="test")
    fit_idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(train.labels == c))[: args.train_per_class]
                                      for c in range(10)]))
    order = rng.permutation(len(test.labels))
    cal_idx, id_idx = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    tiny = read_npz(args.data_dir / "tinyimagenet_oe_32.npz", ("x",), "outlier pool")["x"].transpose(0, 3, 1, 2)
    ood_sets = {"tinyimagenet (near)": tiny, "fashion-mnist (far)": rgb32(load_fashion_mnist("test")),
                "digits (far)": rgb32(load_digits_dataset())}

    if args.encoder is None:
        backbone = get_backbone("mobilenet_v2", input_size=args.input_size)
        cache = cache_dir() / "features"
        features_name = f"frozen ImageNet mobilenet_v2, {args.input_size} px"

        def feats(images: np.ndarray) -> np.ndarray:
            return extract_features(backbone, np.ascontiguousarray(images), cache=cache)
    else:
        model, model_config = load_trained_model(args.encoder)
        features_name = (f"ImageNet mobilenet_v2 fine-tuned with the {model_config.get('objective')} objective "
                         f"({args.encoder})")
        train_info = args.encoder.with_name("train.json")
        model_provenance = json.loads(train_info.read_text()) if train_info.is_file() else {}

        def feats(images: np.ndarray) -> np.ndarray:
            return finetuned_features(model, model_config, images)

    f_fit, y_fit = feats(train.images[fit_idx]), train.labels[fit_idx]
    f_cal, f_id = feats(test.images[cal_idx]), feats(test.images[id_idx])
    halves, f_ood, f_oe = {}, {}, {}
    for name, images in ood_sets.items():
        order = rng.permutation(len(images))
        a, b = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
        halves[name] = (int(a.size), int(b.size))
        f_all = feats(images)
        f_oe[name], f_ood[name] = f_all[a], f_all[b]
    extract_s = time.perf_counter() - t0

    results: dict = {"scores": {}, "clp": {}}
    for name, options in (("gaussian", {}), ("knn_cosine", {"n_neighbors": 5})):
        det = get_detector(name, **options).fit(f_fit, y_fit if name == "gaussian" else None)
        conformal = ConformalDetector(det).calibrate(f_cal)
        s_id = det.score_samples(f_id)
        id_flags = conformal.flags_from_scores(s_id, args.alpha)
        results["scores"][name] = {}
        for ood_name, f in f_ood.items():
            s = det.score_samples(f)
            scores, is_in = np.r_[s_id, s], np.r_[np.ones(s_id.size, bool), np.zeros(s.size, bool)]
            flags = np.r_[id_flags, conformal.flags_from_scores(s, args.alpha)]
            results["scores"][name][ood_name] = {"auroc": auroc(scores, is_in), "fpr95": fpr_at_95_tpr(scores, is_in),
                                                 **decision_metrics(flags, is_in)}
    t_clp = time.perf_counter()
    for ood_name in f_ood:
        members = fit_clp_ensemble(np.r_[f_fit, f_oe[ood_name]], np.r_[y_fit, np.full(len(f_oe[ood_name]), 10)],
                                   n_members=args.members, seed=args.seed, epochs=args.member_epochs, progress=True)
        c_id, c_ood = ensemble_predict(members, f_id, 11), ensemble_predict(members, f_ood[ood_name], 11)
        results["clp"][ood_name] = {
            "clp": confusion_log_probability(c_ood, list(range(10))),
            "clp_id_test": confusion_log_probability(c_id, list(range(10))),
            "id_accuracy": float((c_id.argmax(1) == test.labels[id_idx]).mean()),
            "ood_recognised": float((c_ood.argmax(1) == 10).mean()),
        }
    stem = "near_far_cifar10" if args.encoder is None else "near_far_cifar10_finetuned"
    payload = {
        "benchmark": stem, "features": features_name,
        "config": vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)},
        "sizes": {"fit": int(fit_idx.size), "calibration": int(cal_idx.size), "id_test": int(id_idx.size),
                  **{k: int(len(v)) for k, v in f_ood.items()}},
        "ood_halves_a_b": halves, **results, "clp_seconds": time.perf_counter() - t_clp,
        "extract_seconds": extract_s, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
        "threads": torch.get_num_threads(),
        **({} if args.encoder is None else {"encoder_training": {k: model_provenance.get(k) for k in (
            "config", "n_train", "wall_time_s", "history", "provenance") if k in model_provenance}}),
        "provenance": provenance(vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)},
                                 {"cifar10": archive, "tinyimagenet": args.data_dir / "tinyimagenet_oe_32.npz"}),
    }
    write_json(args.out / f"{stem}.json", payload)
    print(render(payload, args.out, stem))


def render(payload: dict, out: Path, stem: str) -> str:
    """``<stem>.md`` and ``<stem>.png`` from the benchmark's JSON; returns the Markdown."""
    cfg = payload["config"]
    a, encoder = cfg["alpha"], cfg.get("encoder")
    results = {"scores": payload["scores"], "clp": payload["clp"]}
    lines = [
        "# Near and far OOD, CIFAR-10 in-distribution, "
        + ("frozen pretrained MobileNetV2 features" if encoder is None else "CLP-recipe fine-tuned MobileNetV2"),
        "",
        f"Detectors fitted on {payload['sizes']['fit']} labelled CIFAR-10 training images (1,000 per class); "
        f"threshold calibrated on {payload['sizes']['calibration']} CIFAR-10 test images at α = {a}, the other "
        f"{payload['sizes']['id_test']} are the ID test. Near: Tiny-ImageNet; far: Fashion-MNIST test and digits as "
        "32 × 32 RGB; each OOD set halved at random: half B is tested below, half A only trains that pair's CLP "
        f"ensemble. Features: {payload['features']}. Reproduce: `python benchmarks/near_far_cifar10.py"
        f"{'' if encoder is None else ' --encoder ' + str(encoder)}` "
        f"(CPU {payload['cpu_s'] / 60:.0f} min on {payload['threads']} thread(s), of which feature extraction "
        f"{payload['extract_seconds'] / 60:.0f} min wall; features are cached, and a cold run extracts about 42,000 "
        f"images at {cfg['input_size']} × {cfg['input_size']}, about 11 min on one thread).",
        "",
        f"| score | OOD set | AUROC | FPR@95TPR | ID flagged at α (≤ {a}) | OOD flagged at α |",
        "|---|---|---|---|---|---|",
    ]
    for name, per in results["scores"].items():
        for ood_name, r in per.items():
            lines.append(f"| {name} | {ood_name} | {r['auroc']:.4f} | {r['fpr95']:.4f} | "
                         f"{r['realised_fpr_at_alpha']:.4f} | {r['ood_flagged_at_alpha']:.4f} |")
    if encoder is not None:
        tr = payload.get("encoder_training", {})
        tc = tr.get("config", {})
        lines += ["", f"Fine-tuning: `conformood train --config clp_mobilenet_v2 --max-images {tc.get('max_images')} "
                  f"--epochs {tc.get('epochs')} --out DIR` ({tr.get('n_train')} random CIFAR-10 training images, "
                  f"{tc.get('epochs')} epochs, supervised weight {tc.get('ce_weight')}, label smoothing "
                  f"{tc.get('label_smoothing')}, first {tc.get('freeze_blocks')} blocks and BatchNorm frozen; "
                  f"{(tr.get('wall_time_s') or 0) / 60:.0f} min wall on the CPU).", ""]
        frozen_path = out / "near_far_cifar10.json"
        if frozen_path.is_file():
            frozen = json.loads(frozen_path.read_text())["scores"]
            lines += ["AUROC, frozen backbone → fine-tuned ([near_far_cifar10.md](near_far_cifar10.md)):", "",
                      "| score | " + " | ".join(results["clp"]) + " |", "|---|" + "---|" * len(results["clp"])]
            for name, per in results["scores"].items():
                lines.append(f"| {name} | " + " | ".join(
                    f"{frozen[name][o]['auroc']:.3f} → {per[o]['auroc']:.3f}" for o in results["clp"]) + " |")
    below = [(name, ood) for name, per in results["scores"].items() for ood, r in per.items() if r["auroc"] < 0.5]
    if below:
        lines += ["", "Below chance: " + "; ".join(f"{name} on {ood}" for name, ood in below) + " (the score ranks "
                  "those OOD images as more typical than CIFAR-10 test images; upsampled 8 × 8 digits are smooth, "
                  "low-detail images whose features can fall near the class means, where the kNN score, which looks "
                  "at the nearest training images instead, still separates them)."]
    lines += ["", f"![AUROC and CLP per pair]({stem}.png)", "",
              f"CLP (eq. 4) per pair: an ensemble of {cfg['members']} MLPs on the features of D_in ∪ half A of the "
              "OOD set (11 classes), CLP of half B; higher = more confusable with the in-distribution (the CLP paper: "
              "near OOD has the higher CLP).", "",
              "| pair | CLP of the OOD half B | CLP of the ID test | ID accuracy | OOD half B put in the OOD class |",
              "|---|---|---|---|---|",
              *[f"| cifar10 vs {k} | {v['clp']:.3f} | {v['clp_id_test']:.3f} | {v['id_accuracy']:.3f} | "
                f"{v['ood_recognised']:.3f} |" for k, v in results["clp"].items()], ""]
    text = "\n".join(lines)
    write_text(out / f"{stem}.md", text)
    plot(payload, out / f"{stem}.png")
    return text


def plot(payload: dict, path: Path) -> None:
    """AUROC of each score per OOD set (near first) beside the CLP of each pair."""
    from conformood.report.plots import pyplot, save_figure

    plt = pyplot()
    names = list(payload["clp"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(names))
    for i, (score, per) in enumerate(payload["scores"].items()):
        ax.bar(x + (i - 0.5) * 0.38, [per[n]["auroc"] for n in names], 0.38, label=score)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC (OOD half B vs ID test)")
    ax.legend(fontsize=8, frameon=False)
    bx.bar(x, [payload["clp"][n]["clp"] for n in names], 0.6, color="tab:green")
    bx.set_xticks(x, names, fontsize=8, rotation=15)
    bx.set_ylabel("CLP (higher = nearer)")
    fig.suptitle(payload["features"].split(" (")[0], fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
