"""kNN cosine scoring at scale: conformood's detector vs faiss called directly vs scikit-learn.

10,000 queries against banks of 50k, 200k and 1M random vectors (d = 128, k = 5, float32), side by side in
one run. Each implementation builds its structure from the raw bank and returns the mean cosine similarity
of the k nearest neighbours of every query:

* ``conformood``: ``KNNCosineDetector(n_neighbors=5).fit(bank).score_samples(queries)`` (input checks included);
* ``faiss``: L2-normalise, ``IndexFlatIP.add``, ``search``, mean;
* ``sklearn``: ``NearestNeighbors(metric="cosine", algorithm="brute").fit(bank).kneighbors(queries)``.

Times are the best of ``--repeats`` runs in this process; peak memory is the rise of the peak resident set
size during one run in a fresh child process. Writes ``knn.json`` and renders ``knn.md`` from it.

    python benchmarks/knn.py [--banks 50000 200000 1000000] [--queries 10000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path

import numpy as np

from _memory import measure_in_child, report_peak
from conformood.results import provenance

D, K = 128, 5


def _data(n_bank: int, n_query: int):
    rng = np.random.default_rng(n_bank)
    return rng.standard_normal((n_bank, D), dtype=np.float32), rng.standard_normal((n_query, D), dtype=np.float32)


def run_conformood(bank, queries):
    from conformood.scores import KNNCosineDetector

    return KNNCosineDetector(n_neighbors=K, backend="faiss").fit(bank).score_samples(queries)


def run_faiss(bank, queries):
    import faiss

    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(D)
    index.add(np.ascontiguousarray(b, dtype=np.float32))
    sims, _ = index.search(np.ascontiguousarray(q, dtype=np.float32), K)
    return sims.astype(np.float64).mean(axis=1)


def run_sklearn(bank, queries):
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=K, metric="cosine", algorithm="brute").fit(bank).kneighbors(queries)
    return (1.0 - dist).mean(axis=1)


IMPLS = {"conformood": run_conformood, "faiss": run_faiss, "sklearn": run_sklearn}


def _memory_probe(name: str, n_bank: int, n_query: int) -> None:
    bank, queries = _data(n_bank, n_query)
    report_peak(lambda: IMPLS[name](bank, queries), lambda: IMPLS[name](bank[:100], queries[:10]))


def measure_memory(name: str, n_bank: int, n_query: int) -> float:
    return measure_in_child(__file__, name, n_bank, n_query)


def render(result: dict, path: Path) -> None:
    rows = result["results"]
    lines = [
        "# kNN cosine scoring at scale",
        "",
        f"{result['n_queries']} queries, d = {D}, k = {K}, float32, {result['environment']['threads']} threads "
        f"(faiss {result['environment']['faiss']}, scikit-learn {result['environment']['sklearn']}). "
        "Best time in s (peak memory rise in MB); max |score difference| against faiss.",
        "",
        "| bank | conformood | faiss | sklearn | conformood / faiss | sklearn / conformood | max diff vs faiss |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sorted({r["n_bank"] for r in rows}):
        cell = {r["impl"]: r for r in rows if r["n_bank"] == n}
        def fmt(i: str, cell: dict = cell) -> str:
            return f"{cell[i]['time_s']:.2f} ({cell[i]['peak_mb']:.0f})" if i in cell else "—"

        ratio = result["ratios"][str(n)]
        lines.append(
            f"| {n:,} | {fmt('conformood')} | {fmt('faiss')} | {fmt('sklearn')} | "
            f"{ratio['conformood_over_faiss']:.3f} | {ratio.get('sklearn_over_conformood', float('nan')):.1f} | "
            f"{ratio['max_abs_diff_vs_faiss']:.1e} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--banks", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--memory-probe", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        name, nb, nq = args.memory_probe
        _memory_probe(name, int(nb), int(nq))
        return
    import faiss
    import sklearn
    import torch

    from conformood.io import write_json

    rows, ratios = [], {}
    for n in args.banks:
        bank, queries = _data(n, args.queries)
        scores, times = {}, {}
        for name, fn in IMPLS.items():
            best = float("inf")
            for _ in range(args.repeats if name != "sklearn" else 1):
                gc.collect()
                t0 = time.perf_counter()
                scores[name] = fn(bank, queries)
                best = min(best, time.perf_counter() - t0)
            times[name] = best
            peak = measure_memory(name, n, args.queries)
            rows.append({"impl": name, "n_bank": n, "time_s": best, "peak_mb": peak})
            print(f"bank {n:8d} {name:10s} {best:8.2f} s  peak {peak:8.1f} MB", flush=True)
        ratios[str(n)] = {
            "conformood_over_faiss": times["conformood"] / times["faiss"],
            "sklearn_over_conformood": times["sklearn"] / times["conformood"],
            "max_abs_diff_vs_faiss": float(np.max(np.abs(scores["conformood"] - scores["faiss"]))),
            "max_abs_diff_sklearn_vs_faiss": float(np.max(np.abs(scores["sklearn"] - scores["faiss"]))),
        }
        del bank, queries
    result = {
        "provenance": provenance(vars(args)),
        "benchmark": "kNN cosine scoring (s_con, k = 5)",
        "n_queries": args.queries,
        "d": D,
        "k": K,
        "environment": {
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "faiss": faiss.__version__,
            "sklearn": sklearn.__version__,
            "machine": platform.machine(),
        },
        "results": rows,
        "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "knn.json", result)
    render(json.loads((args.out / "knn.json").read_text()), args.out / "knn.md")
    print(f"wrote {args.out / 'knn.json'} and {args.out / 'knn.md'}")


if __name__ == "__main__":
    main()
