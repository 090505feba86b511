"""Fashion-MNIST (ID) end to end with a conformood encoder: one-vs-rest and leave-one-class-out tables with
OOD metrics and the conformal guarantee checked on real scores.

For each task, a small CNN is trained with FIRM (rotations as synthetic outliers) on ``--n-train`` images
of the in-distribution classes drawn from the official training set; ``--n-calibration`` other ID training
images calibrate s_con (k = 1); the official test set (10,000 images) is the test split. The same is done
with raw pixels. CPU budget: see ``--epochs`` / ``--n-train``; wall time is recorded.

    python benchmarks/fmnist_evaluate.py [--classes 0 1 ...] [--epochs 8] [--n-train 1500] [--alpha 0.1]

Writes ``fmnist_evaluate.json`` and ``fmnist_evaluate.md`` under ``--out``, plus one full
``conformood evaluate`` run (features files, JSON, Markdown, HTML, figures) for the first one-vs-rest task.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from conformood.conformal import ConformalDetector, benjamini_hochberg
from conformood.data import load_fashion_mnist, resize_images
from conformood.io import write_json
from conformood.metrics import ood_metrics
from conformood.results import provenance
from conformood.scores import get_detector
from conformood.train.recipes import train_contrastive_encoder
from conformood.train.run_config import TrainRunConfig


def _evaluate(f_train, f_cal, f_test, is_inlier, alpha):
    cd = ConformalDetector(get_detector("knn_cosine", n_neighbors=1)).fit(f_train).calibrate(f_cal)
    scores = cd.detector.score_samples(f_test)
    p = cd.p_values_from_scores(scores)
    bh = benjamini_hochberg(p, alpha)
    return {
        **ood_metrics(scores, is_inlier).to_dict(),
        "realised_fpr_at_alpha": float((p[is_inlier] <= alpha).mean()),
        "ood_flagged_at_alpha": float((p[~is_inlier] <= alpha).mean()),
        "bh_fdp": float(bh[is_inlier].sum() / max(bh.sum(), 1)),
        "bh_power": float(bh[~is_inlier].mean()),
    }


def run_task(train, test, id_classes, args, seed):
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(np.isin(train.labels, id_classes))
    chosen = rng.choice(pool, size=min(args.n_train + args.n_calibration, pool.size), replace=False)
    tr_idx, cal_idx = chosen[: args.n_train], chosen[args.n_train :]
    x_train, x_cal, x_test = train.tensor(tr_idx), train.tensor(cal_idx), test.tensor()
    is_inlier = np.isin(test.labels, id_classes)
    cfg = TrainRunConfig(objective="firm", epochs=args.epochs, batch_size=args.batch_size, lr=0.1,
                         temperature=0.2, image_size=28, crop_scale_min=0.6, seed=seed)
    t0 = time.perf_counter()
    model, history = train_contrastive_encoder(x_train, cfg, checkpoint=None, progress=False)
    train_s = time.perf_counter() - t0
    feats = [model.features(resize_images(x, (28, 28))).numpy() for x in (x_train, x_cal, x_test)]
    raw = [x.flatten(1).numpy() for x in (x_train, x_cal, x_test)]
    return {
        "firm": _evaluate(*feats, is_inlier, args.alpha),
        "raw_pixels": _evaluate(*raw, is_inlier, args.alpha),
        "train_seconds": train_s,
        "final_loss": history.loss[-1],
    }, feats, is_inlier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--protocols", nargs="+", default=["one-vs-rest", "leave-one-class-out"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--n-calibration", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    results = {}
    example_written = False
    for protocol in args.protocols:
        results[protocol] = {}
        for c in args.classes:
            ids = [c] if protocol == "one-vs-rest" else [k for k in range(10) if k != c]
            r, feats, is_inlier = run_task(train, test, ids, args, seed=c)
            results[protocol][train.class_names[c]] = r
            print(f"{protocol:20s} {train.class_names[c]:12s} FIRM AUROC {r['firm']['auroc']:.3f} "
                  f"raw {r['raw_pixels']['auroc']:.3f} FPR@a {r['firm']['realised_fpr_at_alpha']:.3f} "
                  f"({r['train_seconds']:.0f} s)", flush=True)
            if not example_written and protocol == "one-vs-rest":
                from conformood.experiments.evaluate import (
                    EvaluateConfig,
                    run_evaluation,
                )

                ex = args.out / "fmnist_evaluate_example"
                ex.mkdir(parents=True, exist_ok=True)
                paths = []
                for name, f, extra in (("train", feats[0], {}), ("calibration", feats[1], {}),
                                       ("test", feats[2], {"is_inlier": is_inlier})):
                    np.savez(ex / f"features_{name}.npz", features=f, **extra)
                    paths.append(ex / f"features_{name}.npz")
                run_evaluation(
                    EvaluateConfig(*paths, detector="knn_cosine", options={"n_neighbors": 1}, alpha=args.alpha), ex
                )
                for p in paths:
                    p.unlink()  # the features are large; the evaluation is what is kept
                for name in ("test_scores.npz", "detector.safetensors", "detector.safetensors.detector"):
                    (ex / name).unlink()
                example_written = True
    summary = {
        p: {
            m: {
                k: float(np.mean([r[m][k] for r in results[p].values()]))
                for k in ("auroc", "fpr95", "realised_fpr_at_alpha", "bh_fdp", "bh_power")
            }
            for m in ("firm", "raw_pixels")
        }
        for p in results
    }
    out = {"provenance": provenance(vars(args)), "benchmark": "Fashion-MNIST one-vs-rest and leave-one-class-out", "config": vars(args) | {"out": str(args.out)},
           "alpha": args.alpha, "results": results, "mean": summary, "wall_time_s": time.perf_counter() - start,
           "threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "fmnist_evaluate.json", out)
    lines = ["# Fashion-MNIST: one-vs-rest and leave-one-class-out", "",
             f"FIRM (rotations) small CNN, {args.epochs} epochs on {args.n_train} ID images per task, "
             f"{args.n_calibration} calibration images, s_con k = 1, α = {args.alpha}; test = official test set. "
             f"Wall time {out['wall_time_s']:.0f} s on {out['threads']} threads.", ""]
    for p, per in results.items():
        lines += [
            f"## {p}",
            "",
            "| class | FIRM AUROC | raw AUROC | FIRM FPR@95 | realised FPR at α | BH FDP | BH power |",
            "|---|---|---|---|---|---|---|",
        ]
        for c, r in per.items():
            f = r["firm"]
            lines.append(f"| {c} | {f['auroc']:.3f} | {r['raw_pixels']['auroc']:.3f} | {f['fpr95']:.3f} | "
                         f"{f['realised_fpr_at_alpha']:.3f} | {f['bh_fdp']:.3f} | {f['bh_power']:.3f} |")
        m = summary[p]
        lines += [f"| **mean** | {m['firm']['auroc']:.3f} | {m['raw_pixels']['auroc']:.3f} | {m['firm']['fpr95']:.3f} | "
                  f"{m['firm']['realised_fpr_at_alpha']:.3f} | {m['firm']['bh_fdp']:.3f} | {m['firm']['bh_power']:.3f} |", ""]
    (args.out / "fmnist_evaluate.md").write_text("\n".join(lines))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
