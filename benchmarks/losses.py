"""Forward + backward time and peak memory of the contrastive losses vs pytorch-metric-learning.

Side by side in one run, n in {128, ..., 2048} samples per view, d = 128, float32, on the CPU threads torch
uses here. "gram_floor" is the cost every implementation pays: forward + backward of the Gram matrix z z^T
of the same 2n normalised embeddings. Times are medians in this process. Peak memory is measured in a fresh
child process per cell: the rise of its peak resident set size (VmHWM) during one forward + backward over
its resident size just before.

    python benchmarks/losses.py [--sizes 128 256 512 1024 2048] [--out benchmarks/results]

Writes ``losses.json`` then renders ``losses.md`` from it. pytorch-metric-learning's
NTXentLoss needs memory cubic in n (17 GB at n = 512 here), so it is skipped above ``--pml-ntxent-max-n``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _memory import measure_in_child, report_peak
from conformood.io import write_json
from conformood.losses import FIRMLoss, NTXentLoss, SupConLoss
from conformood.results import provenance

D = 128
T = 0.2
SUPCON_CLASSES = 10


def _implementations():
    impls = {
        "gram_floor": lambda z1, z2, lab, flags: (lambda z: (z @ z.T).sum())(F.normalize(torch.cat([z1, z2]), dim=1)),
        "ours_ntxent": lambda z1, z2, lab, flags: NTXentLoss(T)(z1, z2),
        "ours_supcon": lambda z1, z2, lab, flags: SupConLoss(T)(z1, z2, lab),
        "ours_firm": lambda z1, z2, lab, flags: FIRMLoss(T)(z1, z2, flags),
    }
    try:
        from pytorch_metric_learning import losses as pml
    except ImportError:
        print("pytorch-metric-learning is not installed: only conformood is measured", file=sys.stderr)
        return impls
    pml_nt, pml_sc = pml.NTXentLoss(temperature=T), pml.SupConLoss(temperature=T)

    def ids(n):
        return torch.arange(n).repeat(2)

    impls["pml_ntxent"] = lambda z1, z2, lab, flags: pml_nt(torch.cat([z1, z2]), ids(z1.shape[0]))
    impls["pml_supcon"] = lambda z1, z2, lab, flags: pml_sc(torch.cat([z1, z2]), torch.cat([lab, lab]))

    def pml_firm(z1, z2, lab, flags):
        n = z1.shape[0]
        firm_labels = torch.where(flags, torch.zeros(n, dtype=torch.long), torch.arange(1, n + 1))
        return pml_sc(torch.cat([z1, z2]), torch.cat([firm_labels, firm_labels]))

    impls["pml_supcon_as_firm"] = pml_firm
    return impls


def _step_fn(fn, n: int):
    g = torch.Generator().manual_seed(n)
    z1 = torch.randn(n, D, generator=g).requires_grad_()
    z2 = torch.randn(n, D, generator=g).requires_grad_()
    lab = torch.randint(0, SUPCON_CLASSES, (n,), generator=g)
    flags = torch.rand(n, generator=g) < 0.5

    def step():
        z1.grad = z2.grad = None
        fn(z1, z2, lab, flags).backward()

    return step


def measure_time(fn, n: int, budget_s: float, max_reps: int) -> dict:
    step = _step_fn(fn, n)
    gc.collect()
    t0 = time.perf_counter()
    step()  # warm-up
    first = time.perf_counter() - t0
    reps = max(1, min(max_reps, int(budget_s / max(first, 1e-4))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"time_ms": 1e3 * statistics.median(times), "reps": reps}


def _memory_probe(name: str, n: int) -> None:
    """Child process: print the peak RSS rise (MB) of one forward + backward."""
    fn = _implementations()[name]
    # one-time lazy initialisation (autograd engine, thread pools) is not the loss's memory
    report_peak(_step_fn(fn, n), _step_fn(fn, 4))


def measure_memory(name: str, n: int) -> float:
    return measure_in_child(__file__, name, n)


def render(result: dict, path: Path) -> None:
    rows = result["results"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    sizes = sorted({r["n"] for r in rows})
    cell = {(r["impl"], r["n"]): r for r in rows}
    lines = [
        "# Contrastive losses: forward + backward on the CPU",
        "",
        f"d = {D}, float32, temperature {T}, {result['environment']['threads']} torch threads, "
        f"torch {result['environment']['torch']}. Median time in ms (peak memory rise in MB).",
        "",
        "| implementation | " + " | ".join(f"n = {n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for impl in impls:
        cells = []
        for n in sizes:
            r = cell.get((impl, n))
            cells.append("—" if r is None else f"{r['time_ms']:.1f} ({r['peak_mb']:.0f})")
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    lines += ["", "## Ratios", "", "| ratio | " + " | ".join(f"n = {n}" for n in sizes) + " |",
              "|---|" + "---|" * len(sizes)]
    for name, values in result["ratios"].items():
        lines.append(
            f"| {name} | "
            + " | ".join("—" if values.get(str(n)) is None else f"{values[str(n)]:.2f}" for n in sizes)
            + " |"
        )
    for sk in result.get("skipped", []):
        lines.append(f"\n{sk['impl']} at n = {sk['n']} was not run: {sk['reason']}.")
    lines += ["", "Memory growth exponent (slope of log peak memory vs log n, largest three sizes):", ""]
    for impl, slope in result["memory_exponent"].items():
        lines.append(f"- {impl}: {slope:.2f}")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of repetitions per cell")
    parser.add_argument("--max-reps", type=int, default=20)
    parser.add_argument("--pml-ntxent-max-n", type=int, default=512)
    parser.add_argument("--memory-probe", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        _memory_probe(args.memory_probe[0], int(args.memory_probe[1]))
        return
    impls = _implementations()
    rows = []
    skipped = []
    for n in args.sizes:
        for name, fn in impls.items():
            if name == "pml_ntxent" and n > args.pml_ntxent_max_n:
                skipped.append({"impl": name, "n": n, "reason": "memory cubic in n: beyond this machine's 24 GiB"})
                print(f"n={n:5d} {name:20s} skipped (memory cubic in n)", flush=True)
                continue
            r = measure_time(fn, n, args.budget, args.max_reps)
            r["peak_mb"] = measure_memory(name, n)
            rows.append({"impl": name, "n": n, **r})
            print(f"n={n:5d} {name:20s} {r['time_ms']:10.2f} ms  peak {r['peak_mb']:8.1f} MB  ({r['reps']} reps)", flush=True)
    t = {(r["impl"], r["n"]): r["time_ms"] for r in rows}

    def ratio(a, b):
        return {str(n): (t[(a, n)] / t[(b, n)] if (a, n) in t and (b, n) in t else None) for n in args.sizes}

    ratios = {
        "pml_supcon / ours_supcon (speed-up)": ratio("pml_supcon", "ours_supcon"),
        "pml_ntxent / ours_ntxent (speed-up)": ratio("pml_ntxent", "ours_ntxent"),
        "pml_supcon_as_firm / ours_firm (speed-up)": ratio("pml_supcon_as_firm", "ours_firm"),
        "ours_ntxent / gram_floor": ratio("ours_ntxent", "gram_floor"),
        "ours_supcon / gram_floor": ratio("ours_supcon", "gram_floor"),
        "ours_firm / gram_floor": ratio("ours_firm", "gram_floor"),
    }
    import math

    exponent = {}
    for impl in impls:
        pts = [(r["n"], r["peak_mb"]) for r in rows if r["impl"] == impl and r["peak_mb"] > 0][-3:]
        if len(pts) >= 2:
            xs = [math.log(p[0]) for p in pts]
            ys = [math.log(p[1]) for p in pts]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            exponent[impl] = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    result = {
        "provenance": provenance(vars(args)),
        "benchmark": "contrastive losses, forward + backward",
        "d": D,
        "temperature": T,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "results": rows,
        "skipped": skipped,
        "ratios": ratios,
        "memory_exponent": exponent,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "losses.json", result)
    render(json.loads((args.out / "losses.json").read_text()), args.out / "losses.md")
    print(f"wrote {args.out / 'losses.json'} and {args.out / 'losses.md'}")


if __name__ == "__main__":
    main()
