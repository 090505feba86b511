"""Magnetic tiles over many random splits: how much of an image AUROC is the split's draw, and which image score
holds up across draws.

One split of ``inspect_magnetic_tiles.py`` (133 good test parts) moves the mean image AUROC by about 0.02, as much
as the settings chosen on it. Here the patch features of every part (EfficientNet-Lite0, ImageNet weights,
``--input-size`` with ``pad``, stages 6 and 12, the inspector's ``patch_dim=None``) are extracted once, and for
every part q, patch p and good part g the squared distance from p to g's nearest patch is computed once
(``T[q, p, g]``, all pairs, in chunks, resumable). Then the whole-memory-bank inspector of any split is a minimum
over that split's fitting parts, so ``--splits`` splits cost seconds each. Each split is that of
``inspect_magnetic_tiles.py --seed s`` (550 good parts given, 440 of them fitted by the inspector's own draw with
the same seed; the rest of the good parts and every defective part tested).

Image scores compared: the worst patch (``max``), the mean of the three worst (``top3``), the peak of the map
smoothed with σ (``peak_s*``), that peak less the map's median (``peak_s8_minus_median``: a part unusual all
over counts less), and the peak of the map whose grid positions are standardised by the mean and spread of the
calibration parts' distances there (``posnorm_peak_s*``: the tiles' edges are far from their nearest good patch
even on good parts). Without a coreset (the inspector's 10 % coreset moved the mean by 0.001 at 224²).
Writes ``<name>.json`` and ``.md``.

    python benchmarks/inspect_magnetic_tiles_splits.py [--input-size 256] [--splits 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conformood.experiments.inspect_config import fit_input  # noqa: E402
from conformood.experiments.sources import get_encoder  # noqa: E402
from conformood.io import file_digest, write_json, write_text  # noqa: E402
from conformood.metrics import ood_metrics  # noqa: E402
from conformood.results import provenance  # noqa: E402
from conformood.scores.patchcore import patch_maps_to_image  # noqa: E402
from inspect_magnetic_tiles import DATA, read_parts  # noqa: E402

KINDS = ("blowhole", "break", "crack")
SIGMAS = (4, 8, 12)


def features(files, size: int, cache: Path) -> np.ndarray:
    """(n, patches, 152) float32 patch features of every part, cached."""
    if cache.exists():
        return np.load(cache)
    enc = get_encoder(backbone="efficientnet_lite0", weights="imagenet", input_size=size, patch_stages=(6, 12),
                      patch_dim=None)
    out = enc.encode(fit_input(files, size, "pad"), 16, progress=True).astype(np.float32)
    np.save(cache, out)
    return out


def nearest_table(feats: np.ndarray, good: np.ndarray, path: Path, chunk: int = 4, g_chunk: int = 48
                  ) -> np.ndarray:
    """``T[q, p, j]``: squared distance from patch p of part q to the nearest patch of good part ``good[j]``.
    Written to a memory map a chunk of query parts at a time; a rerun continues after the last finished chunk."""
    n, p, d = feats.shape
    table = np.lib.format.open_memmap(path, mode="r+" if path.exists() else "w+", dtype=np.float32,
                                      shape=(n, p, good.size))
    done_path, seconds_path = path.with_suffix(".done"), path.with_suffix(".seconds")
    done = int(done_path.read_text()) if done_path.exists() else 0
    spent = float(seconds_path.read_text()) if seconds_path.exists() else 0.0
    g = torch.from_numpy(feats[good].reshape(-1, d))
    g_sq = (g * g).sum(1)
    start = time.perf_counter()
    for s in range(done, n, chunk):
        q = torch.from_numpy(feats[s:s + chunk].reshape(-1, d))
        q_sq = (q * q).sum(1, keepdim=True)
        out = torch.empty(q.shape[0], good.size)
        for j in range(0, good.size, g_chunk):
            rows = slice(j * p, min(good.size, j + g_chunk) * p)
            d2 = torch.addmm(g_sq[rows], q, g[rows].T, alpha=-2.0)  # |g|² − 2 q·g; |q|² added after the minimum
            out[:, j:j + g_chunk] = d2.reshape(q.shape[0], -1, p).amin(2)
        table[s:s + chunk] = (out + q_sq).clamp_min_(0).reshape(-1, p, good.size).numpy()
        table.flush()
        done_path.write_text(str(min(n, s + chunk)))
        seconds_path.write_text(f"{spent + time.perf_counter() - start:.1f}")
        rate = (time.perf_counter() - start) / (min(n, s + chunk) - done)
        print(f"table {min(n, s + chunk)}/{n} parts, {rate:.1f} s a part", flush=True)
    return np.load(path, mmap_mode="r"), float(seconds_path.read_text()) if seconds_path.exists() else None


def split(seed: int, kinds: np.ndarray, given_n: int = 550, cal_fraction: float = 0.2
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fitting, calibration and test parts of ``inspect_magnetic_tiles.py --seed seed`` (indices into every
    part)."""
    good = np.flatnonzero(kinds == "free")
    order = np.random.default_rng(seed).permutation(good)
    given, test_good = np.sort(order[:given_n]), np.sort(order[given_n:])
    n_cal = int(round(cal_fraction * given_n))
    inner = np.random.default_rng(seed).permutation(given_n)  # Inspector.fit's own draw (cfg.seed = seed)
    return (given[np.sort(inner[n_cal:])], given[np.sort(inner[:n_cal])],
            np.r_[test_good, np.flatnonzero(kinds != "free")])


def image_scores(dist: np.ndarray, cal: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Every compared image score from the patch distances (n, patches) of the test parts; ``cal``: those of the
    calibration parts (never fitted), for the scores that standardise each grid position."""
    grid = int(round(np.sqrt(dist.shape[1])))
    out = {"max": dist.max(1), "top3": np.sort(dist, 1)[:, -3:].mean(1)}
    for sigma in SIGMAS:
        maps = patch_maps_to_image(dist, (grid, grid), (size, size), sigma).reshape(len(dist), -1)
        out[f"peak_s{sigma}"] = maps.max(1)
        if sigma == 8:
            out["peak_s8_minus_median"] = maps.max(1) - np.median(maps, 1)
    # each grid position standardised on the calibration parts (the spread floored at its median over positions:
    # positions that are padding in nearly every part have almost none)
    spread = cal.std(0)
    z = (dist - cal.mean(0)) / np.maximum(spread, np.median(spread))
    for sigma in (4, 8):
        maps = patch_maps_to_image(z, (grid, grid), (size, size), sigma)
        out[f"posnorm_peak_s{sigma}"] = maps.reshape(len(maps), -1).max(1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/conformood-splits"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="inspect_magnetic_tiles_splits")
    parser.add_argument("--render", action="store_true", help="only redraw the table and figure from the JSON")
    args = parser.parse_args()
    if args.render:
        render(json.loads((args.out / f"{args.name}.json").read_text()), args)
        return
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    files, _, kinds = read_parts(args.data)
    args.cache.mkdir(parents=True, exist_ok=True)
    feats = features(files, args.input_size, args.cache / f"features_{args.input_size}.npy")
    good = np.flatnonzero(kinds == "free")
    table, table_s = nearest_table(feats, good, args.cache / f"table_{args.input_size}.npy")
    column = np.full(len(kinds), -1)
    column[good] = np.arange(good.size)
    t_table = time.perf_counter() - start
    runs = []
    for seed in range(args.splits):
        fit, cal, test = split(seed, kinds)
        dist = np.sqrt(np.stack([table[q][:, column[fit]].min(1) for q in test]))
        dist_cal = np.sqrt(np.stack([table[q][:, column[fit]].min(1) for q in cal]))
        is_good = kinds[test] == "free"
        run = {"seed": seed}
        for name, score in image_scores(dist, dist_cal, args.input_size).items():
            auc = {k: ood_metrics(-score[is_good | (kinds[test] == k)],
                                  is_good[is_good | (kinds[test] == k)]).auroc for k in KINDS}
            run[name] = {**auc, "mean": float(np.mean(list(auc.values())))}
        runs.append(run)
        print(json.dumps({k: (v["mean"] if isinstance(v, dict) else v) for k, v in run.items()}), flush=True)
    scores = [k for k in runs[0] if k != "seed"]
    summary = {}
    for name in scores:
        per = {k: np.array([r[name][k] for r in runs]) for k in (*KINDS, "mean")}
        summary[name] = {k: {"mean": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(v.size)),
                             "min": float(v.min()), "max": float(v.max())} for k, v in per.items()}
        summary[name]["splits_at_or_above_0.95"] = int((per["mean"] >= 0.95).sum())
    result = {"provenance": provenance(vars(args), {"data": args.data}, seed=0),
              "setting": {"backbone": "efficientnet_lite0", "input_size": args.input_size, "resize": "pad",
                          "stages": [6, 12], "patch_dim": None, "coreset_fraction": 1.0, "given": 550,
                          "fitted": 440, "data_sha256": file_digest(args.data)},
              "summary": summary, "runs": runs,
              "time_s": {"table_built": table_s, "this_run_until_table": t_table, "total": time.perf_counter() - start},
              "threads": torch.get_num_threads()}
    write_json(args.out / f"{args.name}.json", result)
    render(result, args)


def render(result: dict, args: argparse.Namespace) -> None:
    """The Markdown table and the figure: each split's mean image AUROC under the main image scores."""
    from conformood.report.plots import pyplot, save_figure

    write_text(args.out / f"{args.name}.md", report(result, args))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    seeds = [r["seed"] for r in result["runs"]]
    for name, style in (("max", "s:"), ("peak_s8", "o-"), ("posnorm_peak_s8", "^--")):
        if name in result["runs"][0]:
            ax.plot(seeds, [r[name]["mean"] for r in result["runs"]], style, ms=4, lw=1, label=name)
    ax.axhline(0.95, color="grey", lw=1, ls=":", label="0.95")
    ax.set_xticks(seeds)
    ax.set_xlabel("split (--seed of inspect_magnetic_tiles.py)")
    ax.set_ylabel("mean image AUROC")
    ax.legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    save_figure(fig, args.out / f"{args.name}.png")


def report(result: dict, args: argparse.Namespace) -> str:
    lines = [f"# Magnetic tiles over {args.splits} random splits: image AUROC by image score", "",
             f"`python benchmarks/inspect_magnetic_tiles_splits.py --input-size {args.input_size} --splits "
             f"{args.splits}` (the all-pairs nearest-patch table, built once on 2 threads: "
             f"{(result['time_s'].get('table_built') or 0) / 60:.0f} min; then "
             f"{(result['time_s']['total'] - result['time_s']['this_run_until_table']) / 60:.0f} min for the splits "
             f"on {result.get('threads', 2)} thread(s)).", "",
             f"EfficientNet-Lite0 (ImageNet) at {args.input_size}² (pad), stages 6 and 12, whole memory bank; each "
             "split as `inspect_magnetic_tiles.py --seed s` (440 good parts fitted, 133 good and 257 defective test "
             "parts). Mean over splits (SE; lowest–highest split).", "", f"![each split]({args.name}.png)", "",
             "| image score | blowhole | break | crack | **mean** | splits ≥ 0.95 |", "|---|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        cells = [f"{s[k]['mean']:.4f} ({s[k]['se']:.4f})" for k in KINDS]
        m = s["mean"]
        lines.append(f"| {name} | {' | '.join(cells)} | **{m['mean']:.4f}** ({m['se']:.4f}; {m['min']:.4f}–"
                     f"{m['max']:.4f}) | {s['splits_at_or_above_0.95']} / {args.splits} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
