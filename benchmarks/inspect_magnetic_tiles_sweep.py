"""A sweep of the inspector's patch settings on magnetic tiles, on the whole memory bank (no coreset, so that each
setting is one nearest-neighbour search): the two stages read, the input size, the image score and the maps' σ.

The split is that of ``inspect_magnetic_tiles.py`` (seed 0: 550 good parts given, 440 of them fitted; 133 good and
257 defective test parts). Per setting: mean and per-kind image AUROC for PatchCore's reweighted worst patch
(``rew``), the plain worst patch (``max``), the mean of the three worst (``top3``) and the peak of the map smoothed
with σ = 2, 4, 8 (``mapmax_s*``), and pixel AUROC of those maps (``pix_s*``, on 4 million content pixels drawn at
random). The settings were then chosen on these test parts: a second split (``--seed 1`` of
``inspect_magnetic_tiles.py``) checks them.

    python benchmarks/inspect_magnetic_tiles_sweep.py NAME STAGES SIZE     # e.g. base 6,12 224; s256 6,12 256
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from conformood.experiments.inspect_config import fit_input  # noqa: E402
from conformood.experiments.sources import get_encoder  # noqa: E402
from conformood.metrics import ood_metrics  # noqa: E402
from conformood.scores.patchcore import PatchCoreDetector, patch_maps_to_image  # noqa: E402
from inspect_magnetic_tiles import mask_on_input, read_parts  # noqa: E402

CACHE = Path("/tmp/conformood-sweep")
OUT = Path("benchmarks/results/inspect_magnetic_tiles_sweep.jsonl")


def main() -> None:
    name, stages, size = sys.argv[1], tuple(int(v) for v in sys.argv[2].split(",")), int(sys.argv[3])
    files, masks, kinds = read_parts(Path("../shared/data/magnetic_tile_dev.tar.gz"))
    good = np.flatnonzero(kinds == "free")
    order = np.random.default_rng(0).permutation(good)
    given, test_good = np.sort(order[:550]), np.sort(order[550:])
    n_cal = int(round(0.2 * 550))
    o2 = np.random.default_rng(0).permutation(550)
    fit = given[np.sort(o2[n_cal:])]  # the inspector's fitting part (its calibration part is not used here)
    test = np.r_[test_good, np.flatnonzero(kinds != "free")]
    CACHE.mkdir(parents=True, exist_ok=True)
    cache = CACHE / f"{name}.npz"
    if cache.exists():
        z = np.load(cache)
        pf, pt = z["fit"], z["test"]
    else:
        enc = get_encoder(backbone="efficientnet_lite0", weights="imagenet", input_size=size, patch_stages=stages,
                          patch_dim=None)
        t = time.time()
        pf = enc.encode(fit_input([files.images[i] for i in fit], size, "pad"), 16, progress=True)
        pt = enc.encode(fit_input([files.images[i] for i in test], size, "pad"), 16, progress=True)
        print("extract", time.time() - t, pf.shape, flush=True)
        np.savez(cache, fit=pf, test=pt)
    det = PatchCoreDetector(coreset_fraction=1.0, projection_dim=None).fit(pf)
    t = time.time()
    dist, ids = [], []
    for s in range(0, len(pt), 32):
        d, i = det._nearest(pt[s:s + 32])
        dist.append(d)
        ids.append(i)
    dist, ids = np.concatenate(dist), np.concatenate(ids)
    print("nn", time.time() - t, flush=True)
    g = int(round(np.sqrt(pt.shape[1])))
    is_good = kinds[test] == "free"
    truth = np.stack([mask_on_input(masks[i], size, "pad") for i in test])
    valid = np.stack([mask_on_input(np.ones_like(masks[i]), size, "pad") for i in test])

    def img_auc(score: np.ndarray) -> dict:
        out = {}
        for k in ("blowhole", "break", "crack"):
            sel = is_good | (kinds[test] == k)
            out[k] = round(ood_metrics(-score[sel], is_good[sel]).auroc, 4)
        out["mean"] = round(float(np.mean(list(out.values()))), 4)
        return out

    res = {"name": name, "stages": stages, "size": size}
    res["rew"] = img_auc(det._image_scores(pt, dist, ids))
    res["max"] = img_auc(dist.max(1))
    res["top3"] = img_auc(np.sort(dist, 1)[:, -3:].mean(1))
    for sigma in (2, 4, 8):
        maps = patch_maps_to_image(dist, (g, g), (size, size), sigma)
        res[f"mapmax_s{sigma}"] = img_auc(maps.reshape(len(maps), -1).max(1))
        idx = np.random.default_rng(1).choice(valid.sum(), 4_000_000, replace=False)
        res[f"pix_s{sigma}"] = round(float(roc_auc_score(truth[valid][idx], maps[valid][idx])), 4)
    print(json.dumps(res), flush=True)
    with open(OUT, "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
