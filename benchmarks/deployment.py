"""Deployment guarantees on real images: PAC thresholds, drift alarms, detector ensembles and the exported scorer.

Features are raw pixels (CIFAR-10 box-downsampled to 16×16×3 = 768 values; Fashion-MNIST 28×28 = 784), so the
run needs no training and measures the guarantees, not the representation. Four parts, each written to its own
JSON in ``--out`` as soon as it finishes (a rerun skips finished parts unless ``--force``):

* ``pac``: CIFAR-10 (all classes) in-distribution, s_con (k = 1) on a bank of 10,000 training images; the other
  50,000 images are the inlier pool. Over ``--splits`` re-splits, n calibration scores are drawn and the rest of
  the pool measures the realised FPR of the marginal and the PAC threshold for n ∈ {50, 200, 1000},
  α ∈ {0.05, 0.1}, δ ∈ {0.05, 0.1}; the fraction of splits with FPR > α must be ≤ δ (within 3 SE) for PAC. The
  price is the fraction of Fashion-MNIST (far) and Tiny-ImageNet (near) images flagged under each rule.
* ``monitor``: the same scores; 1,000 exchangeable streams of 5,000 pool images (alarm rate at δ = 0.05), and
  streams that turn, after 1,000 inliers, into a mix with 10 % / 30 % outliers (median detection delay).
* ``ensemble``: one-vs-rest on every class of CIFAR-10 and of Fashion-MNIST (train on 2,000 images of the
  class, calibrate on 1,000 others, test on the test set): s_con, Mahalanobis and s_center alone and combined
  (Fisher, min-p, mean rank); plus the ensemble's FPR over 500 re-splits of one class's held-out inliers.
* ``export``: file size and per-image latency (batch 1 and 256) of exported scorers against the library path.

    python benchmarks/deployment.py [--parts pac monitor ensemble export] [--splits 500] [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from conformood.conformal import (
    ConformalDetector,
    ConformalEnsemble,
    conformal_rank,
    pac_failure_probability,
    pac_rank,
)
from conformood.data import load_named
from conformood.data.named import conform_images, default_data_dir
from conformood.io import write_json
from conformood.metrics import auroc
from conformood.monitor import ConformalMonitor, log_mixture_martingale, online_p_values
from conformood.results import provenance
from conformood.scores import CenterDetector, KNNCosineDetector, MahalanobisDetector

SEED = 0


def pixels(data, shape) -> np.ndarray:
    """Raw-pixel features: images converted to ``shape`` (channels, h, w), flattened, float32."""
    x = conform_images(data, shape).images
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)


def load_features(data_dir: Path) -> dict:
    cifar = load_named("cifar10", data_dir)
    fmnist = load_named("fashion-mnist", data_dir)
    tiny = load_named("tinyimagenet-oe", data_dir)
    return {"cifar": pixels(cifar, (3, 16, 16)), "cifar_labels": cifar.labels,
            "cifar_as_rgb_fmnist": pixels(fmnist, (3, 16, 16)), "tiny": pixels(tiny, (3, 16, 16)),
            "fmnist": pixels(fmnist, (1, 28, 28)), "fmnist_labels": fmnist.labels}


def cifar_scores(feats: dict) -> dict:
    """s_con of the CIFAR-10 pool and of the outlier sets against a bank of 10,000 CIFAR-10 images."""
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(feats["cifar"]))
    bank, pool = order[:10_000], order[10_000:]
    det = KNNCosineDetector(n_neighbors=1).fit(feats["cifar"][bank])
    rng_f = np.random.default_rng(SEED + 1)
    far = feats["cifar_as_rgb_fmnist"][rng_f.choice(len(feats["cifar_as_rgb_fmnist"]), 10_000, replace=False)]
    return {"pool": det.score_samples(feats["cifar"][pool]), "far": det.score_samples(far),
            "near": det.score_samples(feats["tiny"])}


def part_pac(scores: dict, splits: int) -> dict:
    pool, far, near = scores["pool"], np.sort(scores["far"]), np.sort(scores["near"])
    rng = np.random.default_rng(SEED + 2)
    rows = []
    for n in (50, 200, 1000):
        for alpha in (0.05, 0.1):
            for delta in (0.05, 0.1):
                ranks = {"marginal": conformal_rank(alpha, n), "pac": pac_rank(alpha, delta, n)}
                stats = {r: {"fpr": [], "far": [], "near": []} for r in ranks}
                for _ in range(splits):
                    perm = rng.permutation(pool.size)
                    cal, rest = np.sort(pool[perm[:n]]), np.sort(pool[perm[n:]])
                    for rule, k in ranks.items():
                        t = cal[k - 1] if k else -np.inf
                        stats[rule]["fpr"].append(np.searchsorted(rest, t, side="left") / rest.size)
                        stats[rule]["far"].append(np.searchsorted(far, t, side="left") / far.size)
                        stats[rule]["near"].append(np.searchsorted(near, t, side="left") / near.size)
                row = {"n": n, "alpha": alpha, "delta": delta, "splits": splits}
                for rule, k in ranks.items():
                    fpr = np.array(stats[rule]["fpr"])
                    exceed = float((fpr > alpha).mean())
                    row[rule] = {"rank": k, "p_fpr_above_alpha_exact": pac_failure_probability(k, n, alpha),
                                 "fraction_fpr_above_alpha": exceed,
                                 "se": float(np.sqrt(max(exceed * (1 - exceed), delta * (1 - delta)) / splits)),
                                 "mean_fpr": float(fpr.mean()),
                                 "far_flagged": float(np.mean(stats[rule]["far"])),
                                 "near_flagged": float(np.mean(stats[rule]["near"]))}
                row["pac_holds"] = row["pac"]["fraction_fpr_above_alpha"] <= delta + 3 * np.sqrt(
                    delta * (1 - delta) / splits)
                rows.append(row)
                print(f"pac n={n} α={alpha} δ={delta}: P(FPR>α) marginal {row['marginal']['fraction_fpr_above_alpha']:.3f}"
                      f" pac {row['pac']['fraction_fpr_above_alpha']:.3f}; far flagged {row['marginal']['far_flagged']:.3f}"
                      f" -> {row['pac']['far_flagged']:.3f}", flush=True)
    return {"rows": rows}


def part_monitor(scores: dict, streams: int = 1000, length: int = 5000) -> dict:
    pool, far, near = scores["pool"], scores["far"], scores["near"]
    rng = np.random.default_rng(SEED + 3)
    delta = 0.05
    alarms = 0
    for _ in range(streams):
        idx = rng.permutation(pool.size)[: 1000 + length]
        p = online_p_values(pool[idx[:1000]], pool[idx[1000:]], rng)
        alarms += bool((log_mixture_martingale(p) >= np.log(1 / delta)).any())
    rate = alarms / streams
    out = {"exchangeable": {"streams": streams, "length": length, "n_calibration": 1000, "delta": delta,
                            "alarm_rate": rate, "bound": delta + 3 * np.sqrt(delta * (1 - delta) / streams)}}
    shifted = {}
    for kind, outliers in (("far", far), ("near", near)):
        for fraction in (0.1, 0.3):
            delays, missed = [], 0
            for s in range(100):
                idx = rng.permutation(pool.size)[: 1000 + length]
                cal, stream = pool[idx[:1000]], pool[idx[1000:]].copy()
                after = np.arange(length) >= 1000
                swap = after & (rng.random(length) < fraction)
                stream[swap] = outliers[rng.integers(0, outliers.size, swap.sum())]
                cd = ConformalDetector(_Identity()).calibrate_scores(cal)
                result = ConformalMonitor(cd, delta=0.01, seed=s).update_scores(stream)
                if result.alarm and result.alarm_time >= 1000:
                    delays.append(result.alarm_time - 1000)
                else:
                    missed += 1
            shifted[f"{kind}_{int(fraction * 100)}pct"] = {
                "streams": 100, "shift_at": 1000, "delta": 0.01, "missed_or_early": missed,
                "median_delay": float(np.median(delays)) if delays else None,
                "quartiles": [float(np.percentile(delays, q)) for q in (25, 75)] if delays else None}
            print(f"monitor {kind} {fraction:.0%}: median delay {shifted[f'{kind}_{int(fraction * 100)}pct']['median_delay']}",
                  flush=True)
    out["shifted"] = shifted
    return out


class _Identity:
    """A detector whose inputs are already scores."""

    def score_samples(self, x):
        return np.asarray(x, dtype=np.float64).reshape(-1)


def _members(train: np.ndarray) -> dict:
    return {"s_con": KNNCosineDetector(n_neighbors=1).fit(train),
            "mahalanobis": MahalanobisDetector(solver="ridge", ridge=1e-3).fit(train, np.zeros(len(train), int)),
            "s_center": CenterDetector().fit(train)}


def part_ensemble(feats: dict) -> dict:
    rng = np.random.default_rng(SEED + 4)
    results = {}
    for data, x, y, n_test in (("cifar10", feats["cifar"], feats["cifar_labels"], 10_000),
                               ("fashion-mnist", feats["fmnist"], feats["fmnist_labels"], 10_000)):
        test_idx = np.arange(len(x) - n_test, len(x))  # the test split comes last in load_named
        rows = []
        for c in range(10):
            own = np.flatnonzero(y[: len(x) - n_test] == c)
            own = rng.permutation(own)
            train, cal = x[own[:2000]], x[own[2000:3000]]
            test, inlier = x[test_idx], y[test_idx] == c
            members = _members(train)
            row = {"class": c}
            for name, det in members.items():
                cd = ConformalDetector(det).calibrate(cal)
                s = det.score_samples(test)
                row[name] = {"auroc": float(auroc(s, inlier)), "fpr": float(cd.flags_from_scores(s, 0.1)[inlier].mean())}
            for rule in ("fisher", "min_p", "mean_rank"):
                ens = ConformalEnsemble(list(members.values()), rule=rule, seed=c).calibrate(cal)
                s = ens.score_samples(test)
                row[f"ensemble_{rule}"] = {"auroc": float(auroc(s, inlier)),
                                           "fpr": float(ens.predict(test, 0.1)[inlier].mean())}
            rows.append(row)
            print(f"ensemble {data} class {c}: " + ", ".join(f"{k} {v['auroc']:.3f}" for k, v in row.items()
                                                              if k != "class"), flush=True)
        names = [k for k in rows[0] if k != "class"]
        mean = {k: float(np.mean([r[k]["auroc"] for r in rows])) for k in names}
        singles = ["s_con", "mahalanobis", "s_center"]
        best_single = max(singles, key=lambda k: mean[k])
        results[data] = {"rows": rows, "mean_auroc": mean, "best_single_in_hindsight": best_single,
                         "per_class_oracle_single": float(np.mean([max(r[k]["auroc"] for k in singles) for r in rows])),
                         "mean_fpr": {k: float(np.mean([r[k]["fpr"] for r in rows])) for k in names}}
    # the guarantee over 500 re-splits on real features: CIFAR-10 class 0 held-out inliers
    own = rng.permutation(np.flatnonzero(feats["cifar_labels"] == 0))
    members = list(_members(feats["cifar"][own[:2000]]).values())
    held = feats["cifar"][own[2000:]]
    cached = [m.score_samples(held) for m in members]
    lookups = [_Lookup(s) for s in cached]
    fpr = []
    for i in range(500):
        perm = np.random.default_rng(1000 + i).permutation(len(held))
        cal, rest = perm[:1000], perm[1000:]
        ens = ConformalEnsemble(lookups, rule="fisher", seed=i).calibrate(cal[:, None])
        fpr.append(float(ens.predict(rest[:, None], 0.1).mean()))
    fpr = np.array(fpr)
    results["fpr_over_resplits"] = {"data": "cifar10 class 0 (airplane)", "splits": 500, "n_calibration": 1000,
                                    "n_test": int(len(held) - 1000), "alpha": 0.1, "rule": "fisher",
                                    "mean_fpr": float(fpr.mean()), "se": float(fpr.std() / np.sqrt(fpr.size))}
    return results


class _Lookup:
    """Precomputed scores, addressed by row index (the features are (n, 1) index arrays)."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def score_samples(self, idx):
        return self.scores[np.asarray(idx).reshape(-1).astype(np.int64)]


def part_export(feats: dict, out: Path) -> dict:
    from conformood.export import export_scorer, load_scorer
    from conformood.models import build_contrastive_model

    x = feats["cifar"]
    bank, cal, test = x[:10_000], x[10_000:11_000], x[50_000:50_256]
    rows = {}
    model = build_contrastive_model(3, "small_cnn", "mlp", (32, 64, 128), 128).eval()
    images = torch.from_numpy(conform_images_from_features(x[50_000:50_256]))
    with torch.no_grad():
        bank_f = model.features(torch.from_numpy(conform_images_from_features(bank[:5000]))).numpy()
        cal_f = model.features(torch.from_numpy(conform_images_from_features(cal))).numpy()
    setups = {
        "knn_cosine on 768 raw pixels, bank 10,000": (KNNCosineDetector().fit(bank), None, test, cal),
        "mahalanobis on 768 raw pixels": (MahalanobisDetector(solver="ridge", ridge=1e-3).fit(
            bank, np.zeros(len(bank), int)), None, test, cal),
        "small CNN encoder + knn_cosine (bank 5,000), 16x16 images": (KNNCosineDetector().fit(bank_f), model.encoder,
                                                                      images, cal_f),
    }
    for name, (det, encoder, inputs, calib) in setups.items():
        cd = ConformalDetector(det).calibrate(calib)
        path = out / "scorer.pt2"
        example = torch.as_tensor(inputs[:2])
        export_scorer(cd, 0.1, example, path, encoder=encoder)
        program, _ = load_scorer(path)
        size = path.stat().st_size
        t_inputs = torch.as_tensor(inputs)

        def library(batch, cd=cd, encoder=encoder):
            feats_ = model.features(batch).numpy() if encoder is not None else batch.numpy()
            return cd.p_values(feats_), cd.predict(feats_, 0.1)

        timings = {}
        for label, fn in (("exported", lambda b, program=program: program(b)), ("library", library)):
            for batch in (1, 256):
                b = t_inputs[:batch]
                fn(b)
                reps = 200 if batch == 1 else 10
                t0 = time.perf_counter()
                with torch.no_grad():
                    for _ in range(reps):
                        fn(b)
                timings[f"{label}_ms_per_image_batch{batch}"] = (time.perf_counter() - t0) / reps / batch * 1e3
        _, p, flag = program(t_inputs)
        lp, lf = library(t_inputs)
        rows[name] = {"size_mb": size / 1e6, **timings, "max_abs_p_difference": float(np.abs(p.numpy() - lp).max()),
                      "flags_identical": bool(np.array_equal(flag.numpy(), lf))}
        print(f"export {name}: {rows[name]}", flush=True)
        path.unlink()
    return {"rows": rows, "threads": torch.get_num_threads()}


def conform_images_from_features(x: np.ndarray) -> np.ndarray:
    """768 raw-pixel features back to (n, 3, 16, 16) images."""
    return np.ascontiguousarray(x.reshape(len(x), 3, 16, 16))


def plot_figure(parts: dict, path: Path) -> bool:
    """PAC exceedance and its price, drift-alarm delays, ensemble AUROC: one figure from the JSON parts."""
    from conformood.report import pyplot, save_figure

    if not {"pac", "monitor", "ensemble"} <= set(parts):
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(19, 5.2), gridspec_kw={"width_ratios": [2.2, 1, 1.1]})
    rows = parts["pac"]["rows"]
    labels = [f"n={r['n']}\nα={r['alpha']}\nδ={r['delta']}" for r in rows]
    pos = np.arange(len(rows))
    axes[0].bar(pos - 0.2, [r["marginal"]["fraction_fpr_above_alpha"] for r in rows], 0.4, label="marginal")
    axes[0].bar(pos + 0.2, [r["pac"]["fraction_fpr_above_alpha"] for r in rows], 0.4, label="PAC")
    axes[0].scatter(pos + 0.2, [r["delta"] for r in rows], marker="_", s=300, color="k", label="δ", zorder=3)
    axes[0].set_xticks(pos, labels, fontsize=7)
    axes[0].set_ylabel("fraction of calibration draws with FPR > α")
    axes[0].set_title(f"PAC thresholds, CIFAR-10 ({rows[0]['splits']} re-splits)")
    axes[0].legend(fontsize=8, loc="upper left", ncol=3)
    axes[0].set_ylim(0, 0.75)
    twin = axes[0].twinx()
    twin.plot(pos, [r["marginal"]["far_flagged"] - r["pac"]["far_flagged"] for r in rows], "o:", color="tab:red",
              label="power lost (Fashion-MNIST flagged)")
    twin.set_ylabel("power lost, fraction of far OOD", color="tab:red")
    twin.set_ylim(0, 0.75)
    twin.legend(fontsize=8, loc="upper right")
    shifted = parts["monitor"]["shifted"]
    names = list(shifted)
    axes[1].bar(np.arange(len(names)), [shifted[k]["median_delay"] or 0 for k in names], color="tab:green")
    for i, k in enumerate(names):
        q = shifted[k]["quartiles"]
        if q:
            axes[1].plot([i, i], q, color="k", lw=2)
        alarmed = shifted[k]["streams"] - shifted[k]["missed_or_early"]
        axes[1].annotate(f"alarm in {alarmed}/{shifted[k]['streams']}", (i, (q or [0, 0])[1]), ha="center",
                         va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    axes[1].set_xticks(np.arange(len(names)), [k.replace("_", "\n") for k in names])
    axes[1].set_ylabel("inputs from the shift to the alarm (median, quartiles)")
    ex = parts["monitor"]["exchangeable"]
    axes[1].set_title(f"Drift alarms at δ = 0.01\n(exchangeable streams: alarm rate {ex['alarm_rate']:.3f} at "
                      f"δ = {ex['delta']})", fontsize=10)
    ens = parts["ensemble"]
    keys = ["s_con", "mahalanobis", "s_center", "ensemble_fisher", "ensemble_min_p", "ensemble_mean_rank"]
    width = 0.4
    for j, data in enumerate(("cifar10", "fashion-mnist")):
        axes[2].bar(np.arange(len(keys)) + (j - 0.5) * width, [ens[data]["mean_auroc"][k] for k in keys], width,
                    label=data)
    axes[2].set_xticks(np.arange(len(keys)), [k.replace("ensemble_", "ens. ") for k in keys], fontsize=8,
                       rotation=20)
    axes[2].set_ylim(0.5, 1.0)
    axes[2].set_ylabel("mean one-vs-rest AUROC (10 classes)")
    axes[2].set_title("Single detectors and their conformal ensembles")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def write_markdown(out: Path) -> None:
    import json

    parts = {p: json.loads((out / f"{p}.json").read_text()) for p in ("pac", "monitor", "ensemble", "export")
             if (out / f"{p}.json").is_file()}
    lines = ["# Deployment guarantees on real images", "",
             "Raw-pixel features; reproduce with `python benchmarks/deployment.py` (CPU times in each JSON: "
             + ", ".join(f"{k} {v['cpu_s']:.0f} s" for k, v in parts.items()) + ").", ""]
    if plot_figure(parts, out / "deployment.png"):
        lines += ["![PAC exceedance and power lost; drift-alarm delays; ensemble AUROC](deployment.png)", ""]
    if "pac" in parts:
        lines += ["## PAC thresholds (CIFAR-10 in-distribution, s_con on raw pixels)", "",
                  f"{parts['pac']['rows'][0]['splits']} re-splits per row. `P(FPR>α)`: fraction of calibration draws "
                  "whose deployed threshold has a realised FPR above α on the rest of the 50,000-image pool.", "",
                  "| n | α | δ | P(FPR>α) marginal | P(FPR>α) PAC | PAC ≤ δ + 3 SE | mean FPR marginal → PAC | far flagged "
                  "marginal → PAC | near flagged marginal → PAC |", "|---|---|---|---|---|---|---|---|---|"]
        for r in parts["pac"]["rows"]:
            m, p = r["marginal"], r["pac"]
            lines.append(f"| {r['n']} | {r['alpha']} | {r['delta']} | {m['fraction_fpr_above_alpha']:.3f} | "
                         f"{p['fraction_fpr_above_alpha']:.3f} | {'yes' if r['pac_holds'] else 'NO'} | "
                         f"{m['mean_fpr']:.4f} → {p['mean_fpr']:.4f} | {m['far_flagged']:.3f} → {p['far_flagged']:.3f} | "
                         f"{m['near_flagged']:.3f} → {p['near_flagged']:.3f} |")
        lines.append("")
    if "monitor" in parts:
        ex = parts["monitor"]["exchangeable"]
        lines += ["## Drift alarms", "",
                  f"Exchangeable streams: {ex['streams']} streams of {ex['length']} CIFAR-10 images after "
                  f"{ex['n_calibration']} calibration images, δ = {ex['delta']}: alarm rate {ex['alarm_rate']:.3f} "
                  f"(bound δ + 3 SE = {ex['bound']:.3f}).", "",
                  "| outliers after input 1,000 | median delay (inputs) | quartiles | streams without an alarm after the shift |",
                  "|---|---|---|---|"]
        for k, v in parts["monitor"]["shifted"].items():
            lines.append(f"| {k} | {v['median_delay']} | {v['quartiles']} | {v['missed_or_early']} / {v['streams']} |")
        lines.append("")
    if "ensemble" in parts:
        e = parts["ensemble"]
        lines += ["## Ensembles (one-vs-rest, mean AUROC over 10 classes)", "",
                  "| data | s_con | mahalanobis | s_center | best single in hindsight | per-class oracle | Fisher | min-p "
                  "| mean rank |", "|---|---|---|---|---|---|---|---|---|"]
        for data in ("cifar10", "fashion-mnist"):
            m = e[data]["mean_auroc"]
            lines.append(f"| {data} | {m['s_con']:.4f} | {m['mahalanobis']:.4f} | {m['s_center']:.4f} | "
                         f"{e[data]['best_single_in_hindsight']} ({m[e[data]['best_single_in_hindsight']]:.4f}) | "
                         f"{e[data]['per_class_oracle_single']:.4f} | {m['ensemble_fisher']:.4f} | "
                         f"{m['ensemble_min_p']:.4f} | {m['ensemble_mean_rank']:.4f} |")
        f = e["fpr_over_resplits"]
        lines += ["", f"Ensemble FPR at α = {f['alpha']} over {f['splits']} re-splits ({f['data']}, n = "
                  f"{f['n_calibration']}): mean {f['mean_fpr']:.4f} ± {f['se']:.4f} (SE).", ""]
    if "export" in parts:
        lines += ["## Exported scorer (CPU)", "",
                  "| program | size (MB) | exported ms/image (batch 1) | library ms/image (batch 1) | exported ms/image "
                  "(batch 256) | library ms/image (batch 256) | max |Δp| | flags identical |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in parts["export"]["rows"].items():
            lines.append(f"| {name} | {r['size_mb']:.2f} | {r['exported_ms_per_image_batch1']:.3f} | "
                         f"{r['library_ms_per_image_batch1']:.3f} | {r['exported_ms_per_image_batch256']:.4f} | "
                         f"{r['library_ms_per_image_batch256']:.4f} | {r['max_abs_p_difference']:.1e} | "
                         f"{r['flags_identical']} |")
    (out / "deployment.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["pac", "monitor", "ensemble", "export"],
                        choices=["pac", "monitor", "ensemble", "export"])
    parser.add_argument("--splits", type=int, default=500)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "deployment")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in args.parts if args.force or not (args.out / f"{p}.json").is_file()]
    if todo:
        t0 = time.perf_counter()
        feats = load_features(args.data_dir)
        print(f"features loaded in {time.perf_counter() - t0:.0f} s", flush=True)
        scores = cifar_scores(feats) if {"pac", "monitor"} & set(todo) else None
        for part in todo:
            t0, c0 = time.perf_counter(), time.process_time()
            if part == "pac":
                result = part_pac(scores, args.splits)
            elif part == "monitor":
                result = part_monitor(scores)
            elif part == "ensemble":
                result = part_ensemble(feats)
            else:
                result = part_export(feats, args.out)
            config = {"part": part, "splits": args.splits, "seed": SEED, "data_dir": str(args.data_dir)}
            write_json(args.out / f"{part}.json", {
                "benchmark": f"deployment/{part}", **result, "wall_s": time.perf_counter() - t0,
                "cpu_s": time.process_time() - c0,
                "provenance": provenance(config, {"cifar10": args.data_dir / "cifar10-jpg.tar.gz",
                                                  "tinyimagenet": args.data_dir / "tinyimagenet_oe_32.npz"},
                                         seed=SEED)})
    write_markdown(args.out)
    print((args.out / "deployment.md").read_text())


if __name__ == "__main__":
    main()
