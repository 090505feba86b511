"""Defect regions with a guaranteed miss rate on real and synthetic inspection data: CRC, AT, COAT and LTT on an
inspector's anomaly maps, over many random calibration/test re-splits.

Data (``--data``):

- ``magnetic_tiles``: ``../shared/data/magnetic_tile_dev.tar.gz``. An inspector (the settings of
  ``inspect_magnetic_tiles.py``) is fitted on 550 good parts; every defective part (blowhole, break, crack, with its
  pixel mask) and the 133 other good parts are scored once, at their own sizes.
- ``textile``: the demo's textile images. An inspector (the demo's: patch Gaussian + pooled kNN of MobileNetV2) is
  fitted on 600 nominal images; 300 other nominal images get a synthetic defect whose mask is known (a third each:
  CutPaste and NSA, the project's outliers, and a rectangle of pixel noise like the data set's own local defects), and
  100 stay good.

Protocol: a fixed ``--train-fraction`` of the defective images (seeded) trains the AT and COAT threshold predictors
(COAT eq. 8 / Algorithm 1, the small f_D, the paper's 30 / 60 epochs), once per α. The other defective images are
re-split ``--resplits`` times at random into calibration and test halves, and the good test parts into halves too.
On each re-split and α: CRC's threshold (COAT eq. 5), AT's and COAT's correction (Algorithm 1 lines 15–17) and
LTT's threshold (miss rate ≤ α and good-part area ≤ ``--area-alpha`` with probability ≥ 1 − ``--delta``) are
calibrated and judged on the test halves: mean FNR (the fraction of a defect's pixels outside its region), coverage
gap (COAT eq. 3), mean region area on defective and on good parts. The guarantee holds over this draw (the
predictors are fixed), so the mean FNR must be ≤ α within 2 SE, and LTT's two test risks within their levels in at
least (1 − δ) of the re-splits within 3 SE.

    python benchmarks/inspect_regions.py --data magnetic_tiles [--resplits 300]
    python benchmarks/inspect_regions.py --data textile
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from conformood.conformal.risk.anomaly_maps import (
    LTT_GRID,
    area_at,
    defect_values,
    fnr_at,
    ltt_from_risks,
    region_adaptive_correction,
    region_crc_threshold,
    unit_maps,
)
from conformood.conformal.risk.threshold_training import train_threshold_predictor
from conformood.data.image_files import ImageFiles
from conformood.experiments.inspect import InspectConfig, Inspector
from conformood.experiments.inspect_regions import RegionConfig, Regions, mask_on_input, model_input_images
from conformood.io import file_digest, write_json, write_text
from conformood.results import environment, provenance

sys.path.insert(0, str(Path(__file__).parent))
from inspect_magnetic_tiles import read_parts  # noqa: E402

METHODS = ("CRC", "AT", "COAT", "LTT")


def magnetic_tiles(args: argparse.Namespace) -> dict:
    files, masks, kinds = read_parts(args.tiles)
    good = np.flatnonzero(kinds == "free")
    order = np.random.default_rng(args.seed).permutation(good)
    given, test_good = np.sort(order[:550]), np.sort(order[550:])
    defective = np.flatnonzero(kinds != "free")
    cfg = InspectConfig(input_size=args.input_size, image_score=args.image_score, map_sigma=args.map_sigma,
                        seed=args.seed)
    return {"fit": files.subset(given), "config": cfg, "defects": files.subset(defective),
            "masks": [masks[i] for i in defective], "kinds": kinds[defective], "good": files.subset(test_good),
            "source": {"data": str(args.tiles), "data_sha256": file_digest(args.tiles)}}


def textile(args: argparse.Namespace) -> dict:
    from conformood.augment.outliers import cutpaste, nsa_outliers
    from conformood.data import load_textile

    data = load_textile()
    nominal = np.flatnonzero(data.labels == 0)
    order = np.random.default_rng(args.seed).permutation(nominal)
    fit, defect_base, test_good = order[:600], order[600:900], order[900:1000]
    x = torch.from_numpy(data.images[defect_base].astype(np.float32) / 255.0)
    g = torch.Generator().manual_seed(args.seed)
    third = x.shape[0] // 3
    cp, cp_masks = cutpaste(x[:third], area=(0.005, 0.05), jitter=0.3, generator=g)
    nsa, nsa_masks = nsa_outliers(x[third:2 * third], area=(0.005, 0.05), generator=g)
    noise, noise_masks = _noise_patches(x[2 * third:], np.random.default_rng(args.seed))
    defects = torch.cat([cp, nsa, noise]).numpy()
    masks = list(torch.cat([cp_masks, nsa_masks, noise_masks]).numpy())
    kinds = ["cutpaste"] * third + ["nsa"] * third + ["noise"] * (len(masks) - 2 * third)

    def files(images: np.ndarray, prefix: str) -> ImageFiles:
        imgs = [im.astype(np.float32) / 255.0 if im.dtype == np.uint8 else im.astype(np.float32) for im in images]
        return ImageFiles(imgs, [f"{prefix}{i:04d}.png" for i in range(len(imgs))], [im.shape[1:] for im in imgs])

    cfg = InspectConfig(backbone="mobilenet_v2", input_size=250, resize="stretch", local="gaussian",
                        patch_stages=(3,), pooled=True, rule="min_p", calibration_fraction=1 / 3, seed=args.seed,
                        batch_size=50)
    return {"fit": files(data.images[fit], "n"), "config": cfg, "defects": files(defects, "d"), "masks": masks,
            "kinds": np.array(kinds),
            "good": files(data.images[test_good], "g"), "source": {"data": "conformal-clip-data textile"}}


def _noise_patches(x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A rectangle of 0.2–2 % of the image (aspect 1/3 to 3) half replaced by uniform noise: the kind of local defect
    the textile data set holds, here with its mask."""
    out, masks = x.clone(), torch.zeros((x.shape[0], *x.shape[2:]), dtype=torch.bool)
    h, w = x.shape[2:]
    for i in range(x.shape[0]):
        area, aspect = rng.uniform(0.002, 0.02) * h * w, np.exp(rng.uniform(np.log(1 / 3), np.log(3)))
        ph, pw = max(2, min(h - 1, int(round(np.sqrt(area * aspect))))), max(2, min(w - 1, int(round(np.sqrt(
            area / aspect)))))
        top, left = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        patch = out[i, :, top:top + ph, left:left + pw]
        out[i, :, top:top + ph, left:left + pw] = 0.5 * patch + 0.5 * torch.from_numpy(
            rng.random(patch.shape).astype(np.float32))
        masks[i, top:top + ph, left:left + pw] = True
    return out, masks


def prepare(args: argparse.Namespace) -> dict:
    """The data, the fitted inspector (cached) and what it finds on the defective and good test parts."""
    d = magnetic_tiles(args) if args.data == "magnetic_tiles" else textile(args)
    args.cache.mkdir(parents=True, exist_ok=True)
    key = f"{args.data}_{args.input_size}_{args.image_score}_{args.map_sigma:g}_{args.seed}"
    path = args.cache / f"{key}.safetensors"
    t0 = time.perf_counter()
    if path.exists():
        inspector = Inspector.load(path)
    else:
        inspector = Inspector.fit(d["fit"], d["config"], progress=True)
        inspector.save(path)
    d["inspector"], d["seconds_fit"] = inspector, time.perf_counter() - t0
    t0 = time.perf_counter()
    d["found"] = inspector.inspect(d["defects"], progress=True)
    d["found_good"] = inspector.inspect(d["good"], progress=True)
    d["seconds_score"] = time.perf_counter() - t0
    return d


def _per_image(values: list[np.ndarray], thresholds: np.ndarray, adaptive: bool, base: np.ndarray | None = None
               ) -> np.ndarray:
    """Per image the fraction of defect pixels missed, exactly as the calibration counts: u < t, or τ̂ − u > t'."""
    if adaptive:
        return np.array([np.count_nonzero(b - v > t) / v.size for v, b, t in zip(values, base, thresholds)])
    return np.array([np.count_nonzero(v < t) / v.size for v, t in zip(values, thresholds)])


def _area(sorted_unit: list[np.ndarray], thresholds: np.ndarray) -> np.ndarray:
    """Per image the fraction of pixels with u ≥ its threshold (from the sorted unit map)."""
    return np.array([1.0 - np.searchsorted(u, t, side="left") / u.size for u, t in zip(sorted_unit, thresholds)])


def run(args: argparse.Namespace) -> tuple[dict, dict]:
    start = time.perf_counter()
    d = prepare(args)
    inspector, cfg = d["inspector"], d["inspector"].config
    scale = float(inspector.record["map_scale"])
    probe = Regions(RegionConfig(), scale, 0.0)
    unit = probe.unit_on_images(d["found"].maps, d["found"].sizes, cfg)
    unit_good = probe.unit_on_images(d["found_good"].maps, d["found_good"].sizes, cfg)
    values = [np.sort(v) for v in defect_values(unit, d["masks"])]
    sorted_def = [np.sort(u.reshape(-1)) for u in unit]
    sorted_good = [np.sort(u.reshape(-1)) for u in unit_good]
    n = len(values)
    order = np.random.default_rng(args.seed + 11).permutation(n)
    n_train = int(round(args.train_fraction * n))
    train, pool = np.sort(order[:n_train]), np.sort(order[n_train:])
    x = model_input_images(d["defects"], cfg)
    u_in = unit_maps(d["found"].maps, scale).astype(np.float32)
    m_in = np.stack([mask_on_input(m, cfg) for m in d["masks"]])
    x_good = model_input_images(d["good"], cfg)
    fnr_grid = fnr_at(values, LTT_GRID)
    area_grid = area_at(unit_good, LTT_GRID)
    kinds = d["kinds"]
    out: dict = {"alphas": {}, "visibility": _visibility(d, unit, unit_good)}
    tprs: dict = {}
    for alpha in args.alphas:
        base, base_good, train_seconds = {}, {}, {}
        for method in ("at", "coat"):
            t0 = time.perf_counter()
            trained = train_threshold_predictor(x[train], u_in[train], m_in[train], alpha, method, seed=args.seed,
                                                progress=True)
            rule = Regions(RegionConfig(method=method), scale, 0.0, trained.model)
            base[method.upper()] = rule.base_thresholds(x, d["found"].maps)
            base_good[method.upper()] = rule.base_thresholds(x_good, d["found_good"].maps)
            train_seconds[method.upper()] = time.perf_counter() - t0
        rng = np.random.default_rng(args.seed + int(alpha * 1000))
        per = {m: {"fnr": [], "gap": [], "area_defective": [], "area_good": []} for m in METHODS}
        tpr_by_kind = {m: {k: [] for k in sorted(set(kinds))} for m in METHODS}
        ltt_ok, ltt_failed = [], 0
        n_good = len(unit_good)
        for _ in range(args.resplits):
            perm = rng.permutation(pool)
            cal, test = np.sort(perm[:pool.size // 2]), np.sort(perm[pool.size // 2:])
            gperm = rng.permutation(n_good)
            gcal, gtest = gperm[:n_good // 2], gperm[n_good // 2:]
            thresholds = {}
            thresholds["CRC"] = np.full(n, region_crc_threshold([values[i] for i in cal], alpha))
            for m in ("AT", "COAT"):
                t = region_adaptive_correction([values[i] for i in cal], base[m][cal], alpha)
                thresholds[m] = (base[m], t)
            try:
                ltt = ltt_from_risks(fnr_grid[cal], area_grid[gcal], alpha, args.area_alpha, args.delta, LTT_GRID)
                thresholds["LTT"] = np.full(n, ltt.threshold)
            except ValueError:
                ltt_failed += 1
            for m in METHODS:
                if m not in thresholds:
                    continue
                if m in ("AT", "COAT"):
                    b, t = thresholds[m]
                    fnr = _per_image([values[i] for i in test], np.full(test.size, t), True, b[test])
                    own = b - t  # per-image thresholds on u
                    area_def = _area([sorted_def[i] for i in test], own[test])
                    area_good = _area([sorted_good[i] for i in gtest], base_good[m][gtest] - t)
                else:
                    t = thresholds[m]
                    fnr = _per_image([values[i] for i in test], t[test], False)
                    area_def = _area([sorted_def[i] for i in test], t[test])
                    area_good = _area([sorted_good[i] for i in gtest], np.full(gtest.size, t[0]))
                per[m]["fnr"].append(float(fnr.mean()))
                per[m]["gap"].append(float(np.mean(np.abs((1 - fnr) - (1 - alpha)))))
                per[m]["area_defective"].append(float(area_def.mean()))
                per[m]["area_good"].append(float(area_good.mean()))
                for k in tpr_by_kind[m]:
                    tpr_by_kind[m][k] += (1 - fnr[kinds[test] == k]).tolist()
                if m == "LTT":
                    ltt_ok.append(bool(fnr.mean() <= alpha and area_good.mean() <= args.area_alpha))
        out["alphas"][str(alpha)] = _summarise(per, tpr_by_kind, alpha, ltt_ok, ltt_failed, args, train_seconds)
        tprs[str(alpha)] = tpr_by_kind
    out |= {"n_defective": n, "n_train": int(n_train), "n_pool": int(pool.size), "n_good_test": len(unit_good),
            "defect_kinds": {k: int((kinds == k).sum()) for k in sorted(set(kinds))},
            "defect_area": {k: float(np.mean([m.mean() for m, kk in zip(d["masks"], kinds) if kk == k]))
                            for k in sorted(set(kinds))},
            "inspector": inspector.describe(), "map_scale": scale,
            "seconds": {"fit": d["seconds_fit"], "score": d["seconds_score"], "total": time.perf_counter() - start},
            "provenance": provenance(vars(args), {}, seed=args.seed), **d["source"], "environment": environment()}
    return out, tprs


def _visibility(d: dict, unit: list[np.ndarray], unit_good: list[np.ndarray]) -> dict:
    """How well the inspector sees these defects: image AUROC (defective against good test parts) per kind, and pixel
    AUROC on the maps at the images' own sizes (defective parts' pixels, 2 million drawn at random)."""
    from sklearn.metrics import roc_auc_score

    from conformood.metrics import ood_metrics

    kinds = d["kinds"]
    scores, good = d["found"].scores, d["found_good"].scores
    image = {k: ood_metrics(-np.r_[good, scores[kinds == k]], np.r_[np.ones(good.size, bool),
                                                                     np.zeros(int((kinds == k).sum()), bool)]).auroc
             for k in sorted(set(kinds))}
    pix = np.concatenate([u.reshape(-1) for u in unit])
    truth = np.concatenate([m.reshape(-1) for m in d["masks"]])
    idx = np.random.default_rng(0).choice(pix.size, min(pix.size, 2_000_000), replace=False)
    return {"image_auroc": image, "pixel_auroc": float(roc_auc_score(truth[idx], pix[idx]))}


def _summarise(per: dict, tpr_by_kind: dict, alpha: float, ltt_ok: list, ltt_failed: int, args, train_seconds
               ) -> dict:
    res = {}
    for m, vals in per.items():
        if not vals["fnr"]:
            res[m] = {"failed": True}
            continue
        arr = {k: np.array(v) for k, v in vals.items()}
        se = {k: float(v.std(ddof=1) / np.sqrt(v.size)) for k, v in arr.items()}
        res[m] = {**{k: float(v.mean()) for k, v in arr.items()}, "se": se, "n": int(arr["fnr"].size),
                  "holds": bool(arr["fnr"].mean() <= alpha + 2 * se["fnr"]),
                  "coverage_by_kind": {k: {"mean": float(np.mean(v)), "q10": float(np.quantile(v, 0.1)),
                                           "q90": float(np.quantile(v, 0.9))} for k, v in tpr_by_kind[m].items()}}
    pairs = {}
    for a, b in (("AT", "CRC"), ("COAT", "CRC"), ("COAT", "AT")):
        if per[a]["fnr"] and per[b]["fnr"] and len(per[a]["fnr"]) == len(per[b]["fnr"]):
            out = {}
            for key in ("gap", "area_defective", "area_good"):
                diff = np.array(per[a][key]) - np.array(per[b][key])
                out[key] = {"mean": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(diff.size)),
                            "wins": float(np.mean(diff < 0))}
            pairs[f"{a} - {b}"] = out
    rate = float(np.mean(ltt_ok)) if ltt_ok else 0.0
    se = float(np.sqrt(rate * (1 - rate) / max(len(ltt_ok), 1)))
    # LTT may certify no threshold (then it claims no region, which breaks no guarantee): the rate over the re-splits
    # where it chose one, and over all of them with such a re-split counted as holding
    overall = (sum(ltt_ok) + ltt_failed) / max(len(ltt_ok) + ltt_failed, 1)
    ltt = {"both_hold_rate": rate, "se": se, "n": len(ltt_ok), "no_threshold": ltt_failed,
           "both_hold_rate_all": float(overall), "area_alpha": args.area_alpha, "delta": args.delta,
           "holds": bool(ltt_ok) and rate >= (1 - args.delta) - 3 * se}
    return {"methods": res, "paired": pairs, "ltt": ltt, "train_seconds": train_seconds}


def render(result: dict, args: argparse.Namespace, path: Path) -> None:
    """The Markdown table and the per-kind coverage figure."""
    lines = [f"# Defect regions with a stated miss rate: {args.data.replace('_', ' ')}", "",
             f"`python benchmarks/inspect_regions.py --data {args.data} --resplits {args.resplits} --area-alpha "
             f"{args.area_alpha} --delta {args.delta} --train-fraction {args.train_fraction}"
             f"{f' --input-size {args.input_size}' if args.input_size else ''} --image-score {args.image_score} "
             f"--map-sigma {args.map_sigma:g}` ({torch.get_num_threads()} threads; "
             f"{result['seconds']['total']:.0f} s in all, of which {result['seconds']['fit']:.0f} s fitting or "
             "loading the inspector).", "",
             f"{result['n_defective']} defective parts ({', '.join(f'{v} {k}' for k, v in result['defect_kinds'].items())}; "
             f"mean defect area {', '.join(f'{k} {v:.2%}' for k, v in result['defect_area'].items())}): "
             f"{result['n_train']} train the AT/COAT threshold predictors (fixed), the other {result['n_pool']} are "
             f"re-split {args.resplits} times into calibration and test halves; {result['n_good_test']} good test "
             "parts, re-split into halves (LTT's area calibration, and the area on good parts).", "",
             "How well the inspector sees these defects: image AUROC against the good test parts "
             + ", ".join(f"{k} {v:.3f}" for k, v in result["visibility"]["image_auroc"].items())
             + f"; pixel AUROC on the defective parts {result['visibility']['pixel_auroc']:.3f}.", ""]
    for alpha, r in result["alphas"].items():
        lines += [f"## α = {alpha}", "",
                  "| method | mean FNR (SE) | holds (≤ α + 2 SE) | coverage gap (SE) | area, defective parts | "
                  "area, good parts |", "|---|---|---|---|---|---|"]
        for m, v in r["methods"].items():
            if v.get("failed"):
                lines.append(f"| {m} | no threshold certified in any re-split | | | | |")
                continue
            lines.append(f"| {m} | {v['fnr']:.4f} ({v['se']['fnr']:.4f}) | {'yes' if v['holds'] else '**no**'} | "
                         f"{v['gap']:.4f} ({v['se']['gap']:.4f}) | {v['area_defective']:.2%} | "
                         f"{v['area_good']:.2%} |")
        lt = r["ltt"]
        lines += ["", f"LTT (miss rate ≤ {alpha}, good-part area ≤ {lt['area_alpha']}, δ = {lt['delta']}): both "
                      f"test risks within their levels in {lt['both_hold_rate']:.3f} of {lt['n']} re-splits "
                      f"where it certified one (SE {lt['se']:.3f}; needed ≥ {1 - lt['delta']:g} − 3 SE: "
                      f"{'holds' if lt['holds'] else 'not met' if lt['n'] else 'nothing to judge'}); no threshold "
                      f"certified (no region claimed) in {lt['no_threshold']} re-split(s).", "",
                  "Paired differences over the re-splits (mean, SE, share of re-splits where the first is lower):", "",
                  "| pair | coverage gap | area, defective | area, good |", "|---|---|---|---|"]
        for pair, v in r["paired"].items():
            lines.append(f"| {pair} | " + " | ".join(f"{v[k]['mean']:+.4f} ({v[k]['se']:.4f}; {v[k]['wins']:.0%})"
                                                      for k in ("gap", "area_defective", "area_good")) + " |")
        lines += ["", "Per-image coverage (TPR) by defect kind, pooled over the test halves: mean [10th, 90th "
                      "percentile]", "", "| method | " + " | ".join(result["defect_kinds"]) + " |",
                  "|---|" + "---|" * len(result["defect_kinds"])]
        for m, v in r["methods"].items():
            if not v.get("failed"):
                lines.append(f"| {m} | " + " | ".join(
                    f"{c['mean']:.3f} [{c['q10']:.2f}, {c['q90']:.2f}]" for c in v["coverage_by_kind"].values()) + " |")
        lines.append("")
    lines += [f"![per-image coverage by defect kind]({path.stem}.png)", ""]
    write_text(path.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


def figure(result: dict, tprs: dict, path: Path) -> None:
    """Per-image coverage by defect kind and method at each α (box plots over the test halves)."""
    from conformood.report.plots import pyplot, save_figure

    plt = pyplot()
    alphas = list(tprs)
    kinds = list(result["defect_kinds"])
    fig, axes = plt.subplots(1, len(alphas), figsize=(5.5 * len(alphas), 3.8), squeeze=False)
    colours = {"CRC": "#4c72b0", "AT": "#dd8452", "COAT": "#55a868", "LTT": "#8172b3"}
    for ax, alpha in zip(axes[0], alphas):
        for j, m in enumerate(METHODS):
            data = [tprs[alpha][m].get(k, []) or [np.nan] for k in kinds]
            pos = np.arange(len(kinds)) * (len(METHODS) + 1) + j
            box = ax.boxplot(data, positions=pos, widths=0.8, patch_artist=True, showfliers=False, showmeans=True,
                             whis=(5, 95), meanprops={"marker": "D", "markerfacecolor": "white",
                                                      "markeredgecolor": "black", "markersize": 4})
            for patch in box["boxes"]:
                patch.set_facecolor(colours[m])
            ax.plot([], [], color=colours[m], lw=6, label=m)
        ax.axhline(1 - float(alpha), color="black", ls="--", lw=1, label="1 − α")
        ax.set_xticks(np.arange(len(kinds)) * (len(METHODS) + 1) + 1.5, kinds)
        ax.set_ylabel("per-image coverage (TPR)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"α = {alpha}")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{path.stem}: fraction of each defect's pixels inside its region (box: quartiles; whiskers: 5th "
                 "and 95th percentiles; diamond: mean)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("magnetic_tiles", "textile"), default="magnetic_tiles")
    parser.add_argument("--tiles", type=Path, default=Path("../shared/data/magnetic_tile_dev.tar.gz"))
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--resplits", type=int, default=300)
    parser.add_argument("--area-alpha", type=float, default=0.2)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--train-fraction", type=float, default=1 / 3)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--image-score", default="worst_patch")
    parser.add_argument("--map-sigma", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/conformood-regions-cache"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    name = args.name or f"inspect_regions_{args.data}"
    result, tprs = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{name}.json", result)
    figure(result, tprs, args.out / f"{name}.png")
    render(result, args, args.out / f"{name}.md")


if __name__ == "__main__":
    main()
