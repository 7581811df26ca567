"""How do SSDML's dense closed-form and certified sparse propagation scale in time and memory, n = 2,000 / 9,100 / 60,000?

SSDML affinity propagation: dense closed form against the certified sparse solver, n = 2,000 / 9,100 / 60,000.

Data: synthetic stand-ins for a trained embedding — n points of 128-d, 10 Gaussian clusters each spread over
its own 8-d subspace (a low intrinsic dimension mixes slowly, like real embeddings), l2-normalised,
10 labeled points per class (the seed's MNIST setting), k = 10, γ = 0.99, tol = 1e-6 (spec §9, §11).

For every n, in a fresh subprocess each (so that the peak resident memory is that solver's own):

- ``dense``: W* = (1−γ)(I−γQ)⁻¹W⁰ by one LU solve, then the edge gathers. Skipped when the n×n
  float64 matrices cannot fit (more than ``--dense-max`` nodes).
- ``sparse_krylov``: block BiCGSTAB on the unlabeled columns plus C+1 label columns, certified to
  ``tol``; O(n·block + n·k) memory. With ``--max-blocks B`` only the label columns and the first B
  column blocks are solved and the time is extrapolated linearly over all blocks (the row says so);
  every block costs the same O(iterations · n · k · block).

Where both run, the row also reports the largest |W_sparse − W_dense| on the mined edges and the
fraction of anchors whose k/2 triplets are identical (spec §12.5), and the dense/sparse time ratio.

Usage (from the repository root)::

    python experiments/propagation_scaling.py                       # n = 2,000, 9,100, 60,000
    python experiments/propagation_scaling.py --quick               # n = 2,000 only
    python experiments/propagation_scaling.py --sizes 2000 --threads 2

Writes ``benchmarks/results/propagation_scaling.json`` (rows keyed by method = solver, dataset =
``synthetic-n<N>``) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import CLASSES, GAMMA, ROOT, K, make_graph, markdown_table, save_rows

sys.path.insert(0, str(ROOT / "src"))

SIZES = (2000, 9100, 60000)
TOL = 1e-6
TARGET = "sparse at n=60,000, k=10 within 120 s and 4 GiB on 2 cores"


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _worker(n: int, solver: str, max_blocks: int | None, block_size: int, threads: int, queue) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    from dmlkit.targets import propagation as prop

    graph, labels, knn_seconds = make_graph(n)
    before = _rss_gib()
    out = {"knn_seconds": knn_seconds, "rss_before_gib": before}
    start = time.perf_counter()
    if solver == "dense":
        result = prop.propagate(graph, labels, GAMMA, solver="dense")
        out.update(seconds=time.perf_counter() - start, extrapolated=False)
    else:
        n_unlabeled = int((labels < 0).sum())
        n_blocks = math.ceil(n_unlabeled / block_size)
        if max_blocks is not None and max_blocks < n_blocks:
            keep = labels >= 0  # label columns + the first max_blocks unlabeled blocks, timed separately
            sub = torch.nonzero(~keep).squeeze(1)[: max_blocks * block_size]
            t0 = time.perf_counter()
            rhs = torch.zeros(n, CLASSES + 1, dtype=torch.float64)
            rhs[keep.nonzero().squeeze(1), labels[keep]] = 1.0
            rhs[keep, -1] = 1.0
            _, label_iters = prop.krylov_solve(graph.Q, rhs, GAMMA, TOL / 3)
            label_seconds = time.perf_counter() - t0
            block_seconds, iters = [], [label_iters]
            for b in range(max_blocks):
                cols = sub[b * block_size:(b + 1) * block_size]
                rhs = torch.zeros(n, len(cols), dtype=torch.float64)
                rhs[cols, torch.arange(len(cols))] = 1.0
                t0 = time.perf_counter()
                _, used = prop.krylov_solve(graph.Q, rhs, GAMMA, TOL)
                block_seconds.append(time.perf_counter() - t0)
                iters.append(used)
            per_block = sum(block_seconds) / len(block_seconds)
            out.update(seconds=label_seconds + per_block * n_blocks, extrapolated=True, measured_blocks=max_blocks,
                       total_blocks=n_blocks, seconds_per_block=per_block, iterations=max(iters))
            result = None
        else:
            result = prop.propagate(graph, labels, GAMMA, solver="sparse_krylov", tol=TOL, block_size=block_size)
            out.update(seconds=time.perf_counter() - start, extrapolated=False, total_blocks=n_blocks,
                       iterations=result.sweeps)
    out["peak_rss_gib"] = _rss_gib()
    if result is not None:
        out["affinity"] = result.affinity.numpy()
        out["triplets"] = prop.mine_triplets(graph.neighbours, result.affinity).numpy()
        out["uncertified_pairs"] = prop.uncertified_pairs(result.affinity, result.tol) if solver != "dense" else 0
    queue.put(out)


def run(n: int, solver: str, max_blocks: int | None, block_size: int, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(n, solver, max_blocks, block_size, threads, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 2,000 only")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--dense-max", type=int, default=20_000, help="largest n solved densely")
    parser.add_argument("--max-blocks", type=int, default=2, help="sparse blocks timed at n > --full-sparse-max")
    parser.add_argument("--full-sparse-max", type=int, default=9100, help="largest n solved completely by sparse")
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = args.sizes or ((2000,) if args.quick else SIZES)
    import numpy as np
    import torch

    rows = []
    for n in sizes:
        dense = run(n, "dense", None, args.block_size, args.threads) if n <= args.dense_max else None
        blocks = None if n <= args.full_sparse_max else args.max_blocks
        sparse = run(n, "sparse_krylov", blocks, args.block_size, args.threads)
        for solver, out in (("dense", dense), ("sparse_krylov", sparse)):
            if out is None:
                rows.append({"method": solver, "dataset": f"synthetic-n{n}", "protocol": "propagation", "seed": 0,
                             "n": n, "skipped": True, "notes": f"n > dense_max={args.dense_max}: the n×n "
                             f"float64 matrices need {3 * 8 * n * n / 2**30:.0f} GiB"})
                continue
            row = {"method": solver, "dataset": f"synthetic-n{n}", "protocol": "propagation", "seed": 0, "n": n,
                   "load_average_1min": round(os.getloadavg()[0], 1),
                   "k": K, "gamma": GAMMA, "tol": TOL if solver != "dense" else 0.0, "threads": args.threads,
                   "seconds": round(out["seconds"], 2), "knn_seconds": round(out["knn_seconds"], 2),
                   "peak_rss_gib": round(out["peak_rss_gib"], 3), "extrapolated": out["extrapolated"],
                   "metrics": {}}
            for key in ("measured_blocks", "total_blocks", "iterations", "uncertified_pairs"):
                if key in out:
                    row[key] = int(out[key])
            if "seconds_per_block" in out:
                row["seconds_per_block"] = round(out["seconds_per_block"], 2)
            if solver == "sparse_krylov":
                row["target"] = TARGET
                if dense is not None and "affinity" in out:
                    diff = float(np.abs(out["affinity"] - dense["affinity"]).max())
                    same = (out["triplets"] == dense["triplets"]).all(1).reshape(n, K // 2).all(1).mean()
                    row["metrics"] = {"max_abs_diff": diff, "same_triplets_fraction": float(same)}
                    row["dense_over_sparse_time"] = round(dense["seconds"] / out["seconds"], 3)
                row["notes"] = (f"extrapolated from {out['measured_blocks']} of {out['total_blocks']} column blocks"
                                if out["extrapolated"] else "all columns solved")
            rows.append(row)
        data = save_rows("propagation_scaling", rows, key=("method", "dataset", "protocol", "seed"))  # after each n
    print(f"machine: {data['machine']} (torch threads {args.threads}), torch {torch.__version__}")
    print(markdown_table(rows, ["method", "n", "seconds", "peak_rss_gib", "extrapolated", "iterations",
                                ("max |Δ|", lambda r: r.get("metrics", {}).get("max_abs_diff")),
                                ("same triplets", lambda r: r.get("metrics", {}).get("same_triplets_fraction")),
                                ("dense/sparse time", lambda r: r.get("dense_over_sparse_time"))], digits=3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
