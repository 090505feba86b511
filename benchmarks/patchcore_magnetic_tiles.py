"""PatchCore on real magnetic-tile parts: image AUROC per defect kind, pixel AUROC, and the conformal image
false-alarm rate, from ImageNet MobileNetV2 patch features of two stages.

Data: ``../shared/data/magnetic_tile_dev.tar.gz`` (``MT_<kind>/Imgs/<name>.jpg`` with its mask ``<name>.png``;
``MT_Free`` holds the good parts). Every image is read in gray, resized to ``--size`` square as the backbone
resizes (bilinear, antialiased when shrinking; masks by nearest neighbour). The good parts are split at random
(``--seed``) into ``--fit`` for the memory bank, ``--calibration`` for the conformal threshold and the rest for
testing; every defective part is a test anomaly. Writes ``patchcore_magnetic_tiles.json`` and ``.md``.

    python benchmarks/patchcore_magnetic_tiles.py [--size 224] [--stages 7 14] [--dim 256] [--fraction 0.1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conformood.conformal import ConformalDetector, ConformalEnsemble
from conformood.data.arrays import resize_bilinear
from conformood.experiments.sources import get_encoder
from conformood.io import file_digest, write_json, write_text
from conformood.metrics import ood_metrics
from conformood.results import environment, provenance
from conformood.scores import PatchCoreDetector, get_detector

DATA = Path("../shared/data/magnetic_tile_dev.tar.gz")


def read_tiles(path: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(images float (n, 1, size, size) in [0, 1], masks bool (n, size, size), kinds, names): the tiles of
    :func:`inspect_magnetic_tiles.read_parts`, each resized to ``size`` square (masks by nearest neighbour)."""
    from inspect_magnetic_tiles import read_parts

    files, own_masks, kinds = read_parts(path)
    images = [resize_bilinear(torch.from_numpy(x[None]), (size, size))[0].numpy() for x in files.images]
    masks = [np.asarray(Image.fromarray(m).resize((size, size), Image.Resampling.NEAREST)) for m in own_masks]
    return np.stack(images), np.stack(masks), kinds, [n.removesuffix(".jpg") for n in files.names]


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(masks.reshape(-1), maps.reshape(-1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--stages", type=int, nargs=2, default=None, help="default: the backbone's own")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--fit", type=int, default=200)
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--border", type=int, default=2, help="rings of the patch grid left out of the image score")
    parser.add_argument("--rule", default="fisher", help="ensemble rule joining PatchCore and the pooled kNN")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="patchcore_magnetic_tiles")
    args = parser.parse_args()
    if args.stages is None:
        from conformood.models import BACKBONES

        args.stages = BACKBONES.info(args.backbone).extra["patch_stages"]
    start = time.perf_counter()
    images, masks, kinds, names = read_tiles(args.data, args.size)
    good = np.flatnonzero(kinds == "free")
    order = np.random.default_rng(args.seed).permutation(good)
    fit, cal, test_good = order[:args.fit], order[args.fit:args.fit + args.calibration], order[args.fit +
                                                                                                 args.calibration:]
    test = np.r_[test_good, np.flatnonzero(kinds != "free")]
    encoder = get_encoder(backbone=args.backbone, input_size=args.size, patch_stages=tuple(args.stages),
                          patch_dim=args.dim)
    t0 = time.perf_counter()
    features = encoder.encode(images, batch_size=16, progress=True)
    t_extract = time.perf_counter() - t0
    grid = int(round(np.sqrt(features.shape[1])))
    t0 = time.perf_counter()
    det = PatchCoreDetector(coreset_fraction=args.fraction, border=args.border, progress=True).fit(features[fit])
    t_fit = time.perf_counter() - t0
    cd = ConformalDetector(det, alpha=args.alpha).calibrate(features[cal])
    scores = det.score_samples(features[test])
    flags = cd.flags_from_scores(scores)
    is_good = kinds[test] == "free"
    per_kind = {}
    for kind in sorted(set(kinds[test]) - {"free"}):
        sel = is_good | (kinds[test] == kind)
        per_kind[kind] = {"n": int((kinds[test] == kind).sum()),
                          "image_auroc": ood_metrics(scores[sel], is_good[sel]).auroc,
                          "flagged_at_alpha": float(flags[kinds[test] == kind].mean())}
    maps = det.anomaly_maps(features[test], (grid, grid), (args.size, args.size))
    # beside it: the pooled kNN score of the same backbone, and the two joined by the calibrated ensemble
    pooled = get_encoder(backbone=args.backbone, input_size=args.size).encode(images, batch_size=16, progress=True)
    knn = get_detector("knn_cosine", n_neighbors=1).fit(pooled[fit])
    ensemble = ConformalEnsemble([det, knn], rule=args.rule).calibrate([features[cal], pooled[cal]])
    others = {"pooled_knn": knn.score_samples(pooled[test]),
              f"ensemble_{args.rule}": ensemble.score_samples([features[test], pooled[test]])}
    for name, other in others.items():
        for kind in per_kind:
            sel = is_good | (kinds[test] == kind)
            per_kind[kind][f"image_auroc_{name}"] = ood_metrics(other[sel], is_good[sel]).auroc
    result = {
        "provenance": provenance(vars(args), {"data": args.data}, seed=args.seed),
        "setting": {"backbone": args.backbone, "size": args.size, "stages": list(args.stages), "dim": args.dim, "coreset_fraction": args.fraction,
                    "border": args.border,
                    "fit": int(fit.size), "calibration": int(cal.size), "test_good": int(test_good.size),
                    "test_defective": int((~is_good).sum()), "memory_bank": int(det.memory_bank_.shape[0]),
                    "patches_per_image": int(features.shape[1]), "grid": grid,
                    "data_sha256": file_digest(args.data)},
        "per_kind": per_kind,
        "mean_image_auroc": float(np.mean([v["image_auroc"] for v in per_kind.values()])),
        **{f"mean_image_auroc_{name}": float(np.mean([v[f"image_auroc_{name}"] for v in per_kind.values()]))
           for name in others},
        "image_auroc_all": ood_metrics(scores, is_good).auroc,
        "pixel_auroc": pixel_auroc(maps, masks[test]),
        "realised_fpr_at_alpha": float(flags[is_good].mean()),
        "alpha": args.alpha,
        "seconds": {"extract": t_extract, "fit": t_fit, "total": time.perf_counter() - start},
        "environment": environment(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", result)
    s = result["setting"]
    lines = [
        "# PatchCore on magnetic tiles", "",
        f"`python benchmarks/patchcore_magnetic_tiles.py --backbone {args.backbone} --size {args.size} --stages {' '.join(map(str, args.stages))}"
        f" --dim {args.dim} --fraction {args.fraction} --border {args.border}` ({torch.get_num_threads()} threads, "
        f"{result['seconds']['total']:.0f} s in all: extraction {result['seconds']['extract']:.0f} s, fit "
        f"{result['seconds']['fit']:.0f} s).", "",
        f"ImageNet {args.backbone}, patch features after blocks {s['stages'][0]} and {s['stages'][1]} ({s['grid']}×"
        f"{s['grid']} grid, {s['dim']} dims; the outer {s['border']} ring(s) left out of the image score), images "
        f"resized to {s['size']}²; {s['fit']} good parts in the bank "
        f"(coreset {s['coreset_fraction']:.0%}: {s['memory_bank']:,} patches), {s['calibration']} to calibrate, "
        f"{s['test_good']} good and {s['test_defective']} defective test parts.", "",
        f"| defect | n | PatchCore image AUROC | PatchCore flagged at α | pooled kNN | ensemble ({args.rule}) |",
        "|---|---|---|---|---|---|",
        *[f"| {k} | {v['n']} | {v['image_auroc']:.4f} | {v['flagged_at_alpha']:.3f} | "
          f"{v['image_auroc_pooled_knn']:.4f} | {v[f'image_auroc_ensemble_{args.rule}']:.4f} |"
          for k, v in per_kind.items()],
        f"| **mean** | | **{result['mean_image_auroc']:.4f}** | | {result['mean_image_auroc_pooled_knn']:.4f} | "
        f"{result[f'mean_image_auroc_ensemble_{args.rule}']:.4f} |", "",
        f"Pixel AUROC {result['pixel_auroc']:.4f}; realised false-alarm rate on good test parts "
        f"{result['realised_fpr_at_alpha']:.3f} at α = {args.alpha} (one split).", "",
    ]
    write_text(args.out / f"{args.name}.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
