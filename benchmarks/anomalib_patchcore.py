"""PatchCore side by side: conformood against anomalib 2.7, same backbone weights, same images, same splits, one run.

The driver (run with conformood's Python) prepares the magnetic-tile images once (gray, resized to ``--size``
square as the backbone resizes), the split (``--fit`` good parts in the memory bank, then ``--calibration`` good
parts that neither tool uses here, the rest and every defective part to test), and EfficientNet-Lite0's ImageNet
weights in timm's key layout; then it runs each tool in a process of its own, one after the other on the same
machine, and scores both with one implementation of every metric:

* conformood: :class:`~conformood.scores.PatchCoreDetector` on ``get_backbone("efficientnet_lite0",
  patch_stages=(6, 12), patch_dim=None)`` (units 6 and 12 end at strides 8 and 16; 40 + 112 channels side by side,
  the embedding anomalib builds);
* anomalib: ``PatchcoreModel(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"])`` (the same
  stages: timm's TensorFlow-padded Lite0), its weights loaded from the mapped state dict (every key checked), fitted
  as its Lightning module does (embeddings of the training images, then ``subsample_embedding``) and run in
  evaluation mode for scores and anomaly maps. The driver checks first that the two networks give the same
  feature maps on the same input.

Both read the same normalised tensors ((x − 0.5) / 0.5, as the Lite weights were trained). Reported: image AUROC
per defect kind, pixel AUROC, PRO (to FPR 0.3), fit time (features of the fitting images + coreset), per-image
latency at batch 1 and 32 (features, score and map), and each process's peak resident memory.

    python benchmarks/anomalib_patchcore.py --anomalib-python /path/to/anomalib-venv/bin/python [--fraction 0.01]

anomalib lives in a virtualenv of its own (never a dependency of conformood); its versions are recorded.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path("benchmarks/results")
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # EfficientNet-Lite0's blocks per stage


def timm_keys(state: dict) -> dict:
    """efficientnet_pytorch's Lite0 keys (``_blocks.N._depthwise_conv``) → timm's (``blocks.s.i.conv_dw``)."""
    out = {}
    where = [(s, i) for s, n in enumerate(STAGE_REPEATS) for i in range(n)]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            s, i = where[n]
            table = first if n == 0 else other
            out[".".join(["blocks", str(s), str(i), table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


# ---------------------------------------------------------------------------------------------------------------
# the two sides, each in its own process


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _latency(run, x: np.ndarray, batch: int, repeats: int) -> float:
    """Seconds per image of ``run`` on batches of ``batch`` images (one warm-up batch first)."""
    run(x[:batch])
    n = 0
    t0 = time.perf_counter()
    for r in range(repeats):
        s = (r * batch) % max(1, x.shape[0] - batch)
        run(x[s:s + batch])
        n += batch
    return (time.perf_counter() - t0) / n


def side_conformood(work: Path, args: argparse.Namespace) -> dict:
    import torch

    from conformood.models import get_backbone
    from conformood.scores import PatchCoreDetector

    torch.set_num_threads(args.threads)
    data = np.load(work / "inputs.npz")
    x, fit, test = data["images"], data["fit"], data["test"]
    backbone = get_backbone("efficientnet_lite0", input_size=args.size, patch_stages=(6, 12),
                            patch_dim=args.dim or None)

    def features(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return backbone.module(backbone.preprocess(torch.from_numpy(batch))).numpy()

    def extract(idx: np.ndarray) -> np.ndarray:
        return np.concatenate([features(x[idx[s:s + 32]]) for s in range(0, idx.size, 32)])

    t0 = time.perf_counter()
    bank_features = extract(fit)
    t_extract = time.perf_counter() - t0
    test_features = extract(test)
    grid = int(round(np.sqrt(bank_features.shape[1])))
    coreset_times = []
    for seed in args.seeds:
        det = PatchCoreDetector(coreset_fraction=args.fraction, border=0, projection_dim=None, seed=seed)
        t1 = time.perf_counter()
        det.fit(bank_features)
        coreset_times.append(time.perf_counter() - t1)
        score, anomaly_map = det.scores_and_maps(test_features, (grid, grid), (args.size, args.size))
        np.savez(work / f"conformood_out_{seed}.npz", scores=score, maps=anomaly_map.astype(np.float16))
    t_coreset = coreset_times[0]
    t_fit = t_extract + t_coreset

    def infer(batch: np.ndarray) -> None:
        det.scores_and_maps(features(batch), (grid, grid), (args.size, args.size))

    lat1 = _latency(infer, x[test], 1, args.latency_images)
    lat32 = _latency(infer, x[test], 32, max(1, args.latency_images // 32))
    import conformood

    return {"tool": "conformood", "version": conformood.__version__, "torch": torch.__version__,
            "memory_bank": int(det.memory_bank_.shape[0]), "feature_dim": int(bank_features.shape[2]),
            "fit_seconds": t_fit, "extract_seconds": t_extract, "coreset_seconds": t_coreset,
            "coreset_seconds_per_seed": coreset_times, "projection": None,
            "latency_batch1_s": lat1, "latency_batch32_s": lat32, "peak_rss_mb": _peak_mb()}


def side_anomalib(work: Path, args: argparse.Namespace) -> dict:
    import importlib.metadata as md

    import torch
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    data = np.load(work / "inputs.npz")
    x, fit, test = data["images"], data["fit"], data["test"]
    model = PatchcoreModel(layers=["blocks.2", "blocks.4"], backbone="tf_efficientnet_lite0", pre_trained=False,
                           num_neighbors=9)
    net = model.feature_extractor.feature_extractor
    state = load_file(str(work / "lite0_timm.safetensors"))
    wanted = net.state_dict()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise SystemExit(f"the mapped weights lack {missing[:3]}")
    for key, value in wanted.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise SystemExit(f"shape mismatch at {key}: {tuple(state[key].shape)} vs {tuple(value.shape)}")
    net.load_state_dict({k: state[k] for k in wanted})

    def prep(batch: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(batch).float()
        return ((t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t) - 0.5) / 0.5

    # the features of both networks on one input, for the driver's equivalence check
    with torch.no_grad():
        probe = net.eval()(prep(x[:2]))
    np.savez(work / "anomalib_probe.npz", a=probe[0].numpy(), b=probe[1].numpy())
    model.train()
    model.feature_extractor.eval()
    t0 = time.perf_counter()
    for s in range(0, fit.size, 32):
        model(prep(x[fit[s:s + 32]]))
    t_extract = time.perf_counter() - t0
    store = list(model.embedding_store)
    coreset_times = []
    for seed in args.seeds:  # its coreset draws its start and projection from torch's generator
        torch.manual_seed(seed)
        model.train()
        model.embedding_store = list(store)
        t1 = time.perf_counter()
        model.subsample_embedding(args.fraction)
        coreset_times.append(time.perf_counter() - t1)
        model.eval()
        scores, maps = [], []
        with torch.no_grad():
            for s in range(0, test.size, 32):
                out = model(prep(x[test[s:s + 32]]))
                scores.append(out.pred_score.reshape(-1).numpy())
                maps.append(out.anomaly_map.reshape(-1, args.size, args.size).numpy())
        np.savez(work / f"anomalib_out_{seed}.npz", scores=np.concatenate(scores),
                 maps=np.concatenate(maps).astype(np.float16))
    t_coreset = coreset_times[0]
    t_fit = t_extract + t_coreset

    def infer(batch: np.ndarray) -> None:
        with torch.no_grad():
            model(prep(batch))

    lat1 = _latency(infer, x[test], 1, args.latency_images)
    lat32 = _latency(infer, x[test], 32, max(1, args.latency_images // 32))
    versions = {p: md.version(p) for p in ("anomalib", "torch", "torchvision", "timm", "lightning", "numpy")}
    return {"tool": "anomalib", "version": versions["anomalib"], "versions": versions,
            "memory_bank": int(model.memory_bank.shape[0]), "feature_dim": int(model.memory_bank.shape[1]),
            "fit_seconds": t_fit, "extract_seconds": t_extract, "coreset_seconds": t_coreset,
            "coreset_seconds_per_seed": coreset_times,
            "latency_batch1_s": lat1, "latency_batch32_s": lat32, "peak_rss_mb": _peak_mb()}


# ---------------------------------------------------------------------------------------------------------------
# the driver


def prepare(work: Path, args: argparse.Namespace) -> dict:
    from safetensors.torch import save_file

    from conformood.io import file_digest
    from conformood.models import read_weights
    from conformood.models.backbones import packaged_weights
    from patchcore_magnetic_tiles import read_tiles

    images, masks, kinds, names = read_tiles(args.data, args.size)
    good = np.flatnonzero(kinds == "free")
    order = np.random.default_rng(args.seed).permutation(good)
    fit = np.sort(order[:args.fit])
    test = np.r_[np.sort(order[args.fit + args.calibration:]), np.flatnonzero(kinds != "free")]
    np.savez(work / "inputs.npz", images=images.astype(np.float32), fit=fit, test=test)
    np.savez_compressed(work / "truth.npz", masks=masks[test], kinds=kinds[test])
    weights = packaged_weights("efficientnet_lite0")
    save_file({k: v.contiguous() for k, v in timm_keys(read_weights(weights)).items()},
              str(work / "lite0_timm.safetensors"))
    return {"data_sha256": file_digest(args.data), "weights_sha256": file_digest(weights), "fit": int(fit.size),
            "test_good": int((kinds[test] == "free").sum()), "test_defective": int((kinds[test] != "free").sum())}


def check_same_network(work: Path, size: int) -> float:
    """Largest relative difference between the two tools' stage-2 and stage-4 maps on the same two images."""
    import torch

    from conformood.models import get_backbone

    b = get_backbone("efficientnet_lite0", input_size=size)
    net = b.module.net
    x = torch.from_numpy(np.load(work / "inputs.npz")["images"][:2])
    h = b.preprocess(x)
    outs = []
    with torch.no_grad():
        for k, unit in enumerate(net.units()[:12], start=1):
            h = unit(h)
            if k in (6, 12):
                outs.append(h.numpy())
    probe = np.load(work / "anomalib_probe.npz")
    return float(max(np.abs(o - probe[k]).max() / np.abs(o).max() for o, k in zip(outs, ("a", "b"))))


def metrics(work: Path, tool: str, seeds: list[int]) -> dict:
    """Every metric per seed of the coreset, then their mean (reported) and standard deviation."""
    from sklearn.metrics import roc_auc_score

    from conformood.metrics import per_region_overlap

    truth = np.load(work / "truth.npz")
    kinds, masks = truth["kinds"], truth["masks"]
    good = kinds == "free"
    runs = []
    for seed in seeds:
        out = np.load(work / f"{tool}_out_{seed}.npz")
        scores, maps = out["scores"].astype(np.float64), out["maps"].astype(np.float32)
        per_kind = {k: float(roc_auc_score(~good[good | (kinds == k)], scores[good | (kinds == k)]))
                    for k in sorted(set(kinds) - {"free"})}
        runs.append({"image_auroc": per_kind, "mean_image_auroc": float(np.mean(list(per_kind.values()))),
                     "pixel_auroc": float(roc_auc_score(masks.reshape(-1), maps.reshape(-1))),
                     "pro": per_region_overlap(maps, masks)})
    mean = {"image_auroc": {k: float(np.mean([r["image_auroc"][k] for r in runs])) for k in runs[0]["image_auroc"]},
            **{m: float(np.mean([r[m] for r in runs])) for m in ("mean_image_auroc", "pixel_auroc", "pro")}}
    return mean | {"sd": {m: float(np.std([r[m] for r in runs], ddof=1)) if len(runs) > 1 else 0.0
                          for m in ("mean_image_auroc", "pixel_auroc", "pro")}, "per_seed": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/magnetic_tile_dev.tar.gz"))
    parser.add_argument("--anomalib-python", type=Path, help="python of the virtualenv that has anomalib 2.7")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--dim", type=int, default=0, help="conformood's patch feature width (0: the stages' "
                        "channels side by side, as anomalib joins them)")
    parser.add_argument("--fraction", type=float, default=0.01, help="coreset fraction (both tools)")
    parser.add_argument("--fit", type=int, default=200)
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1, 2],
                        help="coreset seeds, comma-separated (metrics are their mean)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-images", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/anomalib_patchcore"))
    parser.add_argument("--side", choices=("conformood", "anomalib"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="anomalib_patchcore")
    args = parser.parse_args()
    if args.side:
        result = (side_conformood if args.side == "conformood" else side_anomalib)(args.work, args)
        (args.work / f"{args.side}.json").write_text(json.dumps(result))
        return
    from conformood.io import write_json, write_text
    from conformood.results import environment, provenance

    if args.anomalib_python is None:
        parser.error("--anomalib-python is required")
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    setting = prepare(args.work, args)
    common = [str(Path(__file__).resolve()), "--work", str(args.work), "--size", str(args.size), "--dim",
              str(args.dim), "--fraction", str(args.fraction), "--threads", str(args.threads), "--latency-images",
              str(args.latency_images), "--seeds", ",".join(map(str, args.seeds))]
    sides = {}
    for tool, python in (("anomalib", str(args.anomalib_python)), ("conformood", sys.executable)):
        print(f"running {tool} …", flush=True)
        subprocess.run([python, *common, "--side", tool], check=True)
        sides[tool] = json.loads((args.work / f"{tool}.json").read_text()) | metrics(args.work, tool, args.seeds)
    same = check_same_network(args.work, args.size)
    a, c = sides["anomalib"], sides["conformood"]
    result = {
        "provenance": provenance({k: str(v) for k, v in vars(args).items()}, {"data": args.data}, seed=args.seed),
        "setting": setting | {"size": args.size, "coreset_fraction": args.fraction, "threads": args.threads,
                              "same_network_max_relative_difference": same},
        "conformood": c, "anomalib": a,
        "ratios": {"fit_speedup": a["fit_seconds"] / c["fit_seconds"],
                   "coreset_speedup": a["coreset_seconds"] / c["coreset_seconds"],
                   "latency_batch1": c["latency_batch1_s"] / a["latency_batch1_s"],
                   "latency_batch32": c["latency_batch32_s"] / a["latency_batch32_s"],
                   "peak_memory": c["peak_rss_mb"] / a["peak_rss_mb"]},
        "seconds": time.perf_counter() - start,
        "environment": environment(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", result)
    kinds = list(c["image_auroc"])
    def row(name, r):
        return (f"| {name} | " + " | ".join(f"{r['image_auroc'][k]:.4f}" for k in kinds) +
                               f" | {r['mean_image_auroc']:.4f} ± {r['sd']['mean_image_auroc']:.4f} | "
                               f"{r['pixel_auroc']:.4f} ± {r['sd']['pixel_auroc']:.4f} | {r['pro']:.4f} | "
                               f"{r['fit_seconds']:.1f} (coreset {r['coreset_seconds']:.1f}) | "
                               f"{1000 * r['latency_batch1_s']:.1f} / {1000 * r['latency_batch32_s']:.1f} | "
                               f"{r['peak_rss_mb']:,.0f} |")
    ratios = result["ratios"]
    lines = [
        "# PatchCore: conformood and anomalib side by side", "",
        f"`python benchmarks/anomalib_patchcore.py --anomalib-python … --fraction {args.fraction} --fit {args.fit}` "
        f"({args.threads} threads per tool, one run, {result['seconds'] / 60:.1f} min in all).", "",
        f"Metrics are the mean (± standard deviation) over coreset seeds {', '.join(map(str, args.seeds))}; times "
        "are of the first seed (fit = features of the fitting images + coreset). Magnetic tiles, "
        f"{setting['fit']} good parts in the memory bank, {setting['test_good']} good and "
        f"{setting['test_defective']} defective test parts, {args.size}² inputs, coreset {args.fraction:.0%}; "
        f"EfficientNet-Lite0 ImageNet weights (sha256 {setting['weights_sha256'][7:19]}…) in both; the two "
        f"networks' stage maps agree to {same:.1e} (relative). anomalib {a['version']} (torch "
        f"{a['versions']['torch']}, timm {a['versions']['timm']}); conformood {c['version']}.", "",
        "| tool | " + " | ".join(kinds) + " | mean image AUROC | pixel AUROC | PRO | fit s | ms/image at batch 1 / 32 "
        "| peak MB |",
        "|---|" + "---|" * (len(kinds) + 6),
        row("anomalib", a), row("conformood", c), "",
        f"conformood fits {ratios['fit_speedup']:.1f}× faster (coreset {ratios['coreset_speedup']:.0f}×); "
        f"latency ratio (conformood / anomalib) {ratios['latency_batch1']:.2f} at batch 1, "
        f"{ratios['latency_batch32']:.2f} at batch 32; peak memory ratio {ratios['peak_memory']:.2f}.", "",
    ]
    write_text(args.out / f"{args.name}.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
