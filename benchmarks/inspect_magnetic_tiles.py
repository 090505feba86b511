"""The inspection path on real magnetic-tile parts: one ``Inspector`` (what ``conformood inspect fit`` builds) fitted
on good parts, judged on held-out good parts and every defective one.

Data: ``../shared/data/magnetic_tile_dev.tar.gz`` (``MT_<kind>/Imgs/<name>.jpg`` with its mask ``<name>.png``;
``MT_Free`` holds the good parts), read at their own sizes as ``inspect`` reads a folder. The good parts are split
at random (``--seed``) into ``--good`` for the inspector (which splits them again into fitting and calibration
parts, ``--calibration-fraction``) and the rest for testing; every defective part is a test anomaly.

Reported: image AUROC per defect kind (each against the good test parts), pixel AUROC and PRO (maps on the model
input, masks brought there as the images are), the flags at α, and the realised false-alarm rate over
``--resplits`` random re-splits of the inspector's calibration parts and the good test parts into calibration and
test parts of the same sizes (the fitted detectors and the ensemble's references fixed: the guarantee holds over
that draw, so its mean must be ≤ α within 2 standard errors). Writes ``<name>.json``, ``.md`` and ``.png``.

    python benchmarks/inspect_magnetic_tiles.py [--backbone mobilenet_v2] [--good 550] [--pooled]
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from conformood.data.image_files import ImageFiles
from conformood.experiments.inspect import InspectConfig, Inspector, content_box
from conformood.io import file_digest, write_json, write_text
from conformood.metrics import ood_metrics, per_region_overlap
from conformood.results import environment, provenance

DATA = Path("../shared/data/magnetic_tile_dev.tar.gz")


def read_parts(path: Path) -> tuple[ImageFiles, list[np.ndarray], np.ndarray]:
    """Every tile at its own size (gray, [0, 1]), its mask (bool, own size) and its kind."""
    from PIL import Image

    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile() and "/Imgs/" in m.name:
                stem, suffix = m.name.rsplit(".", 1)
                members.setdefault(stem, {})[suffix.lower()] = tar.extractfile(m).read()
    images, masks, kinds, names, sizes = [], [], [], [], []
    for stem in sorted(members):
        files = members[stem]
        if "jpg" not in files or "png" not in files:
            continue
        with Image.open(io.BytesIO(files["jpg"])) as img:
            x = np.asarray(img.convert("L"), dtype=np.float32)[None] / 255.0
        with Image.open(io.BytesIO(files["png"])) as msk:
            masks.append(np.asarray(msk.convert("L")) > 127)
        images.append(x)
        sizes.append(x.shape[1:])
        kinds.append(stem.split("/")[0].removeprefix("MT_").lower())
        names.append(stem + ".jpg")
    return ImageFiles(images, names, sizes), masks, np.array(kinds)


def mask_on_input(mask: np.ndarray, size: int, resize: str) -> np.ndarray:
    """A mask brought to the model input as its image is (nearest neighbour; padding is never defect)."""
    from PIL import Image

    top, left, h, w = content_box(mask.shape, size, resize)
    out = np.zeros((size, size), bool)
    out[top:top + h, left:left + w] = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--resize", default="pad")
    parser.add_argument("--good", type=int, default=550, help="good parts given to the inspector")
    parser.add_argument("--calibration-fraction", type=float, default=0.2)
    parser.add_argument("--coreset-fraction", type=float, default=0.1)
    parser.add_argument("--border", type=int, default=0)
    parser.add_argument("--pooled", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--rule", default="fisher")
    parser.add_argument("--augment", nargs="*", default=[], help="flips of the fitting parts: hflip vflip")
    parser.add_argument("--image-score", default="worst_patch")
    parser.add_argument("--map-sigma", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--resplits", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="inspect_magnetic_tiles")
    args = parser.parse_args()
    start = time.perf_counter()
    files, masks, kinds = read_parts(args.data)
    good = np.flatnonzero(kinds == "free")
    order = np.random.default_rng(args.seed).permutation(good)
    given, test_good = np.sort(order[:args.good]), np.sort(order[args.good:])
    test = np.r_[test_good, np.flatnonzero(kinds != "free")]
    cfg = InspectConfig(backbone=args.backbone, input_size=args.input_size, resize=args.resize, alpha=args.alpha,
                        calibration_fraction=args.calibration_fraction, coreset_fraction=args.coreset_fraction,
                        border=args.border, pooled=args.pooled, rule=args.rule, seed=args.seed,
                        augment=tuple(args.augment), image_score=args.image_score, map_sigma=args.map_sigma)
    t0 = time.perf_counter()
    inspector = Inspector.fit(files.subset(given), cfg, progress=True)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = inspector.inspect(files.subset(test), progress=True)
    t_run = time.perf_counter() - t0
    is_good = kinds[test] == "free"
    per_kind = {}
    for kind in sorted(set(kinds[test]) - {"free"}):
        sel = is_good | (kinds[test] == kind)
        per_kind[kind] = {"n": int((kinds[test] == kind).sum()),
                          "image_auroc": ood_metrics(-found.scores[sel], is_good[sel]).auroc,
                          "flagged_at_alpha": float(found.flags[kinds[test] == kind].mean())}
    truth = np.stack([mask_on_input(masks[i], cfg.size, cfg.resize) for i in test])
    valid = np.stack([mask_on_input(np.ones_like(masks[i]), cfg.size, cfg.resize) for i in test])
    from sklearn.metrics import roc_auc_score

    pixel_auroc = float(roc_auc_score(truth[valid], found.maps[valid]))
    pro = per_region_overlap(np.where(valid, found.maps, found.maps.min()), truth)
    # the guarantee over re-splits: calibration statistics and good test statistics, pooled and re-split
    cal_stat = inspector.conformal.calibration_[-1]
    good_stat = -found.scores[is_good]
    pool = np.r_[cal_stat, good_stat]
    rng = np.random.default_rng(args.seed + 7)
    rates = []
    for _ in range(args.resplits):
        perm = rng.permutation(pool.size)
        cal, rest = np.sort(pool[perm[:cal_stat.size]]), pool[perm[cal_stat.size:]]
        p = (1 + np.searchsorted(cal, rest, side="right")) / (cal.size + 1)
        rates.append(float((p <= args.alpha).mean()))
    rates = np.array(rates)
    se = float(rates.std(ddof=1) / np.sqrt(rates.size))
    result = {
        "provenance": provenance(vars(args), {"data": args.data}, seed=args.seed),
        "setting": {**inspector.describe(), "given": int(given.size), "test_good": int(test_good.size),
                    "test_defective": int((~is_good).sum()), "data_sha256": file_digest(args.data)},
        "per_kind": per_kind,
        "mean_image_auroc": float(np.mean([v["image_auroc"] for v in per_kind.values()])),
        "image_auroc_all": ood_metrics(-found.scores, is_good).auroc,
        "pixel_auroc": pixel_auroc, "pro": pro,
        "realised_fpr_this_split": float(found.flags[is_good].mean()),
        "resplits": {"n": int(rates.size), "mean_realised_fpr": float(rates.mean()), "se": se,
                     "q95": float(np.quantile(rates, 0.95)), "holds": bool(rates.mean() <= args.alpha + 2 * se)},
        "alpha": args.alpha,
        "seconds": {"fit": t_fit, "run": t_run, "run_per_image": t_run / test.size,
                    "total": time.perf_counter() - start},
        "environment": environment(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", result)
    _figure(args.out / f"{args.name}.png", files, test, found, masks, is_good, kinds, cfg, result)
    s = result["setting"]
    lines = [
        "# Inspection of magnetic tiles", "",
        f"`python benchmarks/inspect_magnetic_tiles.py --backbone {args.backbone} --resize {args.resize} "
        f"--good {args.good} {f'--input-size {args.input_size} ' if args.input_size else ''}"
        f"--calibration-fraction {args.calibration_fraction} --coreset-fraction {args.coreset_fraction} --border "
        f"{args.border} {'--pooled' if args.pooled else '--no-pooled'}"
        f"{' --augment ' + ' '.join(args.augment) if args.augment else ''} --image-score {args.image_score} "
        f"--map-sigma {args.map_sigma:g} --name {args.name}` "
        f"({torch.get_num_threads()} threads; fit "
        f"{t_fit:.0f} s, {1000 * t_run / test.size:.0f} ms per test image with its map, "
        f"{result['seconds']['total']:.0f} s in all).", "",
        f"One inspector: {args.backbone} at {cfg.size}² ({cfg.resize}), PatchCore on two stages "
        f"(coreset {cfg.coreset_fraction:.0%}, {args.border} border ring(s) left out of the image score; image "
        f"score {cfg.image_score}, maps smoothed with σ = {cfg.map_sigma:g})"
        f"{f', joined with the pooled kNN score ({cfg.rule})' if cfg.pooled else ''}; {given.size} good parts given "
        f"({', '.join(f'{v} {k}' for k, v in s['split_sizes'].items())}), {test_good.size} good and "
        f"{(~is_good).sum()} defective test parts.", "",
        "| defect | n | image AUROC | flagged at α |", "|---|---|---|---|",
        *[f"| {k} | {v['n']} | {v['image_auroc']:.4f} | {v['flagged_at_alpha']:.3f} |" for k, v in per_kind.items()],
        f"| **mean** | | **{result['mean_image_auroc']:.4f}** | |", "",
        f"Pixel AUROC {pixel_auroc:.4f}, PRO {pro:.4f}. False-alarm rate at α = {args.alpha}: "
        f"{result['realised_fpr_this_split']:.3f} on this split; over {rates.size} re-splits of calibration and good "
        f"test parts mean {rates.mean():.4f} (SE {se:.4f}; 95th percentile {np.quantile(rates, 0.95):.3f}): "
        f"{'holds' if result['resplits']['holds'] else 'DOES NOT HOLD'} (mean ≤ α + 2 SE).", "",
        f"![examples]({args.name}.png)", "",
    ]
    write_text(args.out / f"{args.name}.md", "\n".join(lines))
    print("\n".join(lines))


def _figure(path: Path, files: ImageFiles, test: np.ndarray, found, masks, is_good, kinds, cfg, result) -> None:
    """Per defect kind the two highest-scored parts and one good part: image with mask outline, and overlay."""
    from conformood.report.inspect_run import map_on_image, overlay
    from conformood.report.plots import pyplot, save_figure

    plt = pyplot()
    picks = []
    for kind in ("blowhole", "break", "crack"):
        idx = np.flatnonzero(kinds[test] == kind)
        picks += [(kind, i) for i in idx[np.argsort(-found.scores[idx])[:2]]]
    g = np.flatnonzero(is_good)
    picks += [("good", g[np.argmax(found.scores[g])]), ("good", g[np.argmin(found.scores[g])])]
    scale = result["setting"]["map_scale"]
    fig, axes = plt.subplots(2, len(picks), figsize=(2.1 * len(picks), 5.0))
    for c, (kind, i) in enumerate(picks):
        j = test[i]
        box = content_box(files.sizes[j], cfg.size, cfg.resize)
        axes[0, c].imshow(files.images[j][0], cmap="gray", vmin=0, vmax=1)
        if masks[j].any():
            axes[0, c].contour(masks[j], levels=[0.5], colors="red", linewidths=0.8)
        axes[0, c].set_title(f"{kind}\n{'flagged' if found.flags[i] else 'accepted'} (p={found.p_values[i]:.3f})",
                             fontsize=8, color="firebrick" if found.flags[i] else "black")
        axes[1, c].imshow(overlay(files.images[j], map_on_image(found.maps[i], box, files.sizes[j]) / scale))
        for ax in axes[:, c]:
            ax.axis("off")
    fig.suptitle("magnetic tiles: defect outline (red, top) and the inspector's anomaly map (bottom)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
