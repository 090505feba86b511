"""Reproduction of Table 1 of ``contrastive-conformal-sets.md``: the 3-D mixed-cluster simulation (app. B).

Per seed: 5 classes × 5,000 points (:func:`conformood.data.simulation.ccs_mixed_clusters`), 60 % training,
20 % calibration, 20 % test. Eight rows: the ℓ2 ball and the Mahalanobis ellipsoid (vanilla CP), and the
single-norm / generalized multi-norm sets trained on J_vol, J_neg or J_neg+vol (k = 200, 30 epochs, SGD
lr 0.01, batch 256, clip 1.0, λ = 0.05, α = 0.05, steepness 7). Every set is calibrated on one positive per
calibration anchor and evaluated on 20 positives and 20 negatives per test anchor: coverage of positives,
exclusion of negatives, log-volume. Jobs (seed × method) run in ``workers`` processes.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validation import check_alpha, check_positive_int
from ..io import write_json
from ..results import environment, result_header

ROWS = (
    ("Conformal Ball (ℓ2)", "ball", None),
    ("Mahalanobis Ellipsoid", "ellipsoid", None),
    ("Single (Vol)", "single", "vol"),
    ("Generalized (Vol)", "generalized", "vol"),
    ("Single (Neg)", "single", "neg"),
    ("Generalized (Neg)", "generalized", "neg"),
    ("Single (Neg, Vol)", "single", "neg+vol"),
    ("Generalized (Neg, Vol)", "generalized", "neg+vol"),
)

# Table 1 of the paper (40 seeds): coverage %, exclusion %, LogVol as (mean, std) — for side-by-side display.
PAPER_TABLE1 = {
    "Conformal Ball (ℓ2)": ((95.0, 0.2), (18.8, 12.6), (7.36, 0.74)),
    "Mahalanobis Ellipsoid": ((95.0, 0.3), (32.4, 13.2), (6.51, 0.48)),
    "Single (Vol)": ((95.0, 0.2), (42.9, 11.5), (6.25, 0.39)),
    "Generalized (Vol)": ((95.0, 0.2), (23.1, 12.2), (-58.64, 317.55)),
    "Single (Neg)": ((95.0, 0.2), (45.8, 13.5), (10.75, 3.22)),
    "Generalized (Neg)": ((95.0, 0.2), (39.6, 14.8), (4.28, 58.89)),
    "Single (Neg, Vol)": ((95.0, 0.2), (49.0, 13.2), (6.69, 0.61)),
    "Generalized (Neg, Vol)": ((95.0, 0.2), (34.8, 13.8), (-99.21, 445.68)),
}


@dataclass
class CCSSimConfig:
    """Settings of :func:`run_ccs_sim` (defaults: the paper's app. B)."""

    seeds: int = 40
    seed_offset: int = 0
    alpha: float = 0.05
    pairs_per_anchor: int = 200
    epochs: int = 30
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 256
    clip: float = 1.0
    lam: float = 0.05
    steepness: float = 7.0
    detach_quantile: bool = False
    eval_pairs: int = 20
    n_per_class: int = 5000
    workers: int = 2

    def __post_init__(self) -> None:
        check_positive_int(self.seeds, "seeds")
        check_positive_int(self.pairs_per_anchor, "pairs_per_anchor")
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.workers, "workers")
        check_positive_int(self.eval_pairs, "eval_pairs")
        self.alpha = check_alpha(self.alpha)


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed + 12345).permutation(n)
    a, b = int(0.6 * n), int(0.8 * n)
    return order[:a], order[a:b], order[b:]


def run_one(cfg: CCSSimConfig, seed: int, family: str, objective: str | None) -> dict:
    """One (seed, method) cell of Table 1."""
    from ..conformal.sets.families import SET_FAMILIES, calibrate_labelled
    from ..conformal.sets.sampling import evaluate_set
    from ..conformal.sets.training import train_conformal_set
    from ..data.simulation import ccs_mixed_clusters

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    x, y = ccs_mixed_clusters(n_per_class=cfg.n_per_class, seed=seed)
    tr, ca, te = _split(x.shape[0], seed)
    cset = SET_FAMILIES.create(
        family, dim=3, alpha=cfg.alpha, **({"seed": seed} if SET_FAMILIES.info(family).seeded else {})
    )
    info: dict = {}
    if objective is not None:
        result = train_conformal_set(
            cset, x[tr], y[tr], objective=objective, pairs_per_anchor=cfg.pairs_per_anchor, epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr, momentum=cfg.momentum, clip=cfg.clip, lam=cfg.lam, steepness=cfg.steepness,
            detach_quantile=cfg.detach_quantile, seed=seed,
        )
        info = {"best_epoch": result.best_epoch, "train_exclusion": result.best_exclusion}
    calibrate_labelled(cset, x[ca], y[ca], seed + 1)
    out = evaluate_set(cset, x[te], y[te], cfg.eval_pairs, seed + 2)
    return out | info | {"seed": seed, "wall_time_s": time.perf_counter() - t0, "params": cset.state()}


def _job(args):
    cfg, seed, label, family, objective = args
    return label, run_one(cfg, seed, family, objective)


def _stat(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def run_ccs_sim(config: CCSSimConfig | None, out_dir: str | Path, progress: bool = True) -> dict:
    """Run Table 1; write ``ccs_sim.json`` (per method coverage / exclusion / log_volume, mean and std over
    seeds) and ``ccs_sim.md`` to ``out_dir``."""
    cfg = config or CCSSimConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seeds = [cfg.seed_offset + s for s in range(cfg.seeds)]
    # Slow (learned) jobs first so the pool stays busy to the end.
    jobs = [(cfg, s, label, fam, obj) for label, fam, obj in ROWS if obj for s in seeds]
    jobs += [(cfg, s, label, fam, obj) for label, fam, obj in ROWS if not obj for s in seeds]
    cells: dict[str, list[dict]] = {label: [] for label, _, _ in ROWS}
    bar = tqdm(total=len(jobs), desc="Table 1 cells", disable=not progress)
    if cfg.workers > 1:
        ctx = mp.get_context("spawn")
        with ctx.Pool(cfg.workers) as pool:
            for label, res in pool.imap_unordered(_job, jobs):
                cells[label].append(res)
                bar.update(1)
    else:
        for job in jobs:
            label, res = _job(job)
            cells[label].append(res)
            bar.update(1)
    bar.close()
    methods = {}
    for label, _, _ in ROWS:
        runs = sorted(cells[label], key=lambda r: r["seed"])
        methods[label] = {
            "coverage": _stat([r["coverage"] for r in runs]),
            "exclusion": _stat([r["exclusion"] for r in runs]),
            "log_volume": _stat([r["log_volume"] for r in runs]),
            "per_seed": [
                {k: r[k] for k in ("seed", "coverage", "exclusion", "log_volume", "wall_time_s")} for r in runs
            ],
        }
    payload = {
        **result_header("reproduce ccs-sim", asdict(cfg)),
        "methods": methods,
        "paper_table1": {
            k: {"coverage_pct": v[0], "exclusion_pct": v[1], "log_volume": v[2]} for k, v in PAPER_TABLE1.items()
        },
        "wall_time_s": time.perf_counter() - t0,
        "environment": environment(workers=cfg.workers),
    }
    write_json(out / "ccs_sim.json", payload)
    from ..report.ccs import render_ccs

    render_ccs(payload, out)
    return payload
