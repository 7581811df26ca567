"""How close and how fast is SSDML's partitioned propagation (``solver="partitioned"``) against the dense solve, n = 9,100 and 60,000?

SSDML's partitioned propagation (``solver="partitioned"``) at n = 9,100 and 60,000, measured.

Same synthetic graphs as ``experiments/propagation_scaling.py`` (10 clusters of 128-d points on their own
8-d subspaces, l2-normalised, 10 labels per class, k = 10, γ = 0.99). For every n, in a fresh
subprocess (so that ``peak_rss_gib`` is that run's own): the kNN graph (timed apart, ``knn_seconds``),
then the partitioned propagation (``seconds``: parts, local dense solves, edge gathers), then the
mining. At n ≤ ``--dense-max`` the dense closed form runs too (its own subprocess) and the row reports
how many mined triplets agree (``same_triplets_fraction``: identical (anchor, positive, negative);
``same_anchor_fraction``: anchors whose k/2 triplets are all identical) and the largest |ΔW|.

``--part-sizes`` measures several part sizes at the 9,100 check, showing the agreement a part size
gives at the ratio n / part_size of the 60,000 run (60,000 / 1,500 = 40 parts ≈ 9,100 / 230).

    python experiments/propagation_partitioned.py [--sizes 9100 60000] [--threads 2] [--part-size 1500]
        [--part-sizes 1500 230] [--dense-cache DIR]

``--dense-cache DIR`` keeps the dense affinities of each n in DIR (``dense-n<N>.pt``) and reuses them.
Writes ``benchmarks/results/propagation_partitioned.json``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import ROOT, markdown_table, save_rows

sys.path.insert(0, str(ROOT / "src"))

from _common import GAMMA, K, make_graph


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _worker(n: int, solver: str, part_size: int, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from dmlkit.targets import propagation as prop

    graph, labels, knn_seconds = make_graph(n)
    start = time.perf_counter()
    result = prop.propagate(graph, labels, GAMMA, solver=solver, part_size=part_size)
    seconds = time.perf_counter() - start
    triplets = prop.mine_triplets(graph.neighbours, result.affinity)
    queue.put({"seconds": seconds, "knn_seconds": knn_seconds, "peak_rss_gib": _rss_gib(),
               "affinity": result.affinity.numpy(), "triplets": triplets.numpy()})


def run(n: int, solver: str, part_size: int, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(n, solver, part_size, threads, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def dense_reference(n: int, threads: int, cache: Path | None) -> dict:
    import torch

    path = cache / f"dense-n{n}.pt" if cache else None
    if path is not None and path.exists():
        return torch.load(path, weights_only=False)
    out = run(n, "dense", 0, threads)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[9100, 60000])
    parser.add_argument("--part-size", type=int, default=1500, help="core nodes per part (SSDML's default)")
    parser.add_argument("--part-sizes", type=int, nargs="*", default=[230],
                        help="extra part sizes measured at the n <= --dense-max checks")
    parser.add_argument("--dense-max", type=int, default=9100, help="largest n also solved densely")
    parser.add_argument("--dense-cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import numpy as np

    rows = []
    for n in args.sizes:
        dense = dense_reference(n, args.threads, args.dense_cache) if n <= args.dense_max else None
        part_sizes = [args.part_size] + (args.part_sizes if dense is not None else [])
        for part_size in part_sizes:
            out = run(n, "partitioned", part_size, args.threads)
            row = {"method": "partitioned", "dataset": f"synthetic-n{n}", "protocol": f"part_size={part_size}",
                   "seed": 0, "n": n, "k": K, "gamma": GAMMA, "part_size": part_size, "threads": args.threads,
                   "seconds": round(out["seconds"], 2), "knn_seconds": round(out["knn_seconds"], 2),
                   "peak_rss_gib": round(out["peak_rss_gib"], 3), "extrapolated": False,
                   "load_average_1min": round(os.getloadavg()[0], 1),
                   "target": "n=60,000 within 120 s and 4 GiB on 2 cores", "metrics": {}}
            if dense is not None:
                same = (out["triplets"] == dense["triplets"]).all(1)
                row["metrics"] = {
                    "same_triplets_fraction": float(same.mean()),
                    "same_anchor_fraction": float(same.reshape(n, K // 2).all(1).mean()),
                    "max_abs_diff": float(np.abs(out["affinity"] - dense["affinity"]).max()),
                }
                row["dense_seconds"] = round(dense["seconds"], 2)
            rows.append(row)
            print(f"[n={n} part_size={part_size}] {row['seconds']} s, {row['peak_rss_gib']} GiB, {row['metrics']}",
                  file=sys.stderr, flush=True)
            save_rows("propagation_partitioned", [row], key=("method", "dataset", "protocol", "seed", "threads"))
    print(markdown_table(rows, ["n", "part_size", "seconds", "knn_seconds", "peak_rss_gib", "extrapolated",
                                ("same triplets", lambda r: r["metrics"].get("same_triplets_fraction")),
                                ("same anchors", lambda r: r["metrics"].get("same_anchor_fraction")),
                                "dense_seconds"], digits=3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
