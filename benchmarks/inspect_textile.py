"""The inspector on the demo's textile images, over several seeds of its fitting/calibration split.

The demo's nominal split (``fractions`` 0.5 / 0.25 / 0.25, seed 0) gives the inspector 750 nominal images and
keeps 250 nominal images with every local (500) and global (500) defect for testing. The inspector (the demo's:
MobileNetV2 at 250², the patch Gaussian on the stage after 3 units, the pooled kNN, joined by min_p, α = 0.1)
splits its 750 images into 500 to fit and 250 to calibrate (125 references of the joined score, 125 calibration
scores) by its own ``seed``; each seed is one run. Reported per seed: image AUROC of local and of global defects
against the nominal test images, the flagged fractions, the realised false-alarm rate, fit and run time.
Writes ``inspect_textile.json`` and ``.md``.

    python benchmarks/inspect_textile.py [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from conformood.data import load_textile, train_calibration_test_split
from conformood.data.image_files import ImageFiles
from conformood.experiments.inspect import InspectConfig, Inspector
from conformood.io import write_json, write_text
from conformood.metrics import ood_metrics
from conformood.results import environment, provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rule", default="min_p")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    start = time.perf_counter()
    data = load_textile()
    nominal = np.flatnonzero(data.labels == 0)
    split = train_calibration_test_split(np.zeros(nominal.size, np.int64), (0.5, 0.25, 0.25), seed=0)
    given = np.sort(np.r_[nominal[split.train], nominal[split.calibration]])
    test = np.sort(np.r_[nominal[split.test], np.flatnonzero(data.labels != 0)])

    def files(idx: np.ndarray) -> ImageFiles:
        return ImageFiles([data.images[i].astype(np.float32) / 255.0 for i in idx], [str(i) for i in idx],
                          [tuple(data.images[i].shape[1:]) for i in idx])

    kinds = data.labels[test]
    runs = []
    for seed in args.seeds:
        cfg = InspectConfig(backbone="mobilenet_v2", input_size=250, resize="stretch", local="gaussian",
                            patch_stages=(3,), pooled=True, rule=args.rule, calibration_fraction=1 / 3, alpha=0.1,
                            seed=seed)
        t0 = time.perf_counter()
        inspector = Inspector.fit(files(given), cfg)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = inspector.inspect(files(test))
        t_run = time.perf_counter() - t0
        floor = 1.0 / (len(inspector.record["split"]["reference"]) + 1)  # the smallest member p-value
        at_floor = np.isclose(1.0 - found.scores, floor) if args.rule == "min_p" else np.zeros(len(test), bool)
        row = {"seed": seed, "fit_s": t_fit, "run_s": t_run,
               "realised_fpr": float(found.flags[kinds == 0].mean()),
               "nominal_at_floor": float(at_floor[kinds == 0].mean()),
               "defects_at_floor": float(at_floor[kinds != 0].mean())}
        for k, name in ((1, "local"), (2, "global")):
            sel = (kinds == 0) | (kinds == k)
            row[f"{name}_auroc"] = ood_metrics(-found.scores[sel], kinds[sel] == 0).auroc
            row[f"{name}_flagged"] = float(found.flags[kinds == k].mean())
        runs.append(row)
        print(row)
    mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0] if k != "seed"}
    result = {"provenance": provenance(vars(args), {}, seed=args.seeds[0]), "runs": runs, "mean": mean,
              "counts": {"given": int(given.size), "test_nominal": int((kinds == 0).sum()),
                         "test_local": int((kinds == 1).sum()), "test_global": int((kinds == 2).sum())},
              "seconds_total": time.perf_counter() - start, "environment": environment()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "inspect_textile.json", result)
    lines = ["# The inspector on the textile images", "",
             f"`python benchmarks/inspect_textile.py --seeds {' '.join(map(str, args.seeds))} --rule {args.rule}` "
             f"(2 cores; {result['seconds_total']:.0f} s in all). The demo's inspector; 750 nominal images given "
             "(500 fit, 125 references, 125 calibration, by the seed), 250 nominal, 500 local and 500 global test "
             "images.", "",
             "| seed | AUROC local | AUROC global | local flagged | global flagged | false alarms | nominal at the "
             "floor | defects at the floor | fit s | run s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in [*runs, {"seed": "**mean**", **mean}]:
        lines.append(f"| {r['seed']} | {r['local_auroc']:.4f} | {r['global_auroc']:.4f} | {r['local_flagged']:.3f} | "
                     f"{r['global_flagged']:.3f} | {r['realised_fpr']:.3f} | {r['nominal_at_floor']:.3f} | "
                     f"{r['defects_at_floor']:.3f} | {r['fit_s']:.0f} | {r['run_s']:.0f} |")
    lines += ["", "\"At the floor\": the statistic (the smaller of the two member p-values against the references) "
              "at 1/(references + 1), where plain conformal p-values put every image beyond all references, tied "
              "whatever its scores. The inspector's joined score (file format 2) gives those member p-values a "
              "continuous tail (`conformood.conformal.detection.ensemble.tail_p_values`), so nothing sits at the "
              "floor. With the floor (format 1, commit f98c758) the same five seeds gave local / "
              "global AUROC 0.9991 / 1.0000, 0.9976 / 0.9977, 0.9878 / 0.9880, 0.9935 / 0.9937, 0.9895 / 0.9899 "
              "(mean 0.9935 / 0.9938), with 0–2.4 % of the nominal test images at the floor beside 97–100 % of "
              "the defects.", ""]
    write_text(args.out / "inspect_textile.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
