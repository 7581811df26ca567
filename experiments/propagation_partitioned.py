"""How close and how fast is SSDML's partitioned propagation (``solver="partitioned"``) against the dense solve, n = 9,100 and 60,000?

Two kinds of graph, k = 10, γ = 0.99:

- ``synthetic``: the graphs of ``experiments/propagation_scaling.py`` (10 classes of 128-d points on their
  own 8-d subspaces, 10 labels per class). Each class is its own connected component of the kNN graph.
- ``glyphs``: 9,100 images of the ``glyphs`` variant (both splits, 200 classes) as L2-normalised raw
  pixels, 5 visible labels per class: one connected graph whose neighbourhoods mix classes (kNN purity
  .63), as a network's embedding early in training does.

For every graph and (part_size, local_factor), in a fresh subprocess (so that ``peak_rss_gib`` is that run's
own): the kNN graph (timed apart, ``knn_seconds``), then the partitioned propagation (``seconds`` wall,
``cpu_seconds``), then the mining. At n ≤ ``--dense-max`` the dense closed form runs too and the row
reports how many mined triplets agree (``same_triplets_fraction``: identical (anchor, positive,
negative); ``same_positive_set_fraction``: anchors whose k/2 positives are the same set) and, where the
graph has true classes that mix, how good the triplets are against them (``positive_same_class``,
``negative_same_class``, ``correct``: positive of the anchor's class and negative not) beside the dense
solve's and the kNN-distance order's (rows ``dense`` and ``knn-order``).

    python experiments/propagation_partitioned.py [--graphs synthetic glyphs] [--sizes 9100 60000]
        [--settings 250:8 250:12 1500:1] [--threads 2] [--dense-cache DIR]

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
from queue import Empty

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import ROOT, markdown_table, save_rows

sys.path.insert(0, str(ROOT / "src"))

from _common import GAMMA, K, make_graph

GLYPHS_LABELS_PER_CLASS = 5


def glyphs_graph(n: int, seed: int = 0):
    """``n`` glyphs images (both splits) as L2-normalised pixels, 5 visible labels per class:
    (kNN graph, visible labels, true classes, seconds of the kNN graph)."""
    import numpy as np
    import torch

    from dmlkit.data.registry import load_records
    from dmlkit.targets.propagation import knn_graph

    records = load_records("glyphs")
    idx = np.sort(np.random.default_rng(seed).choice(len(records.labels), n, replace=False))
    pixels = torch.from_numpy(np.asarray(records.images)[idx].reshape(n, -1).astype(np.float32))
    truth = torch.as_tensor(np.asarray(records.labels)[idx]).long()
    labels = torch.full_like(truth, -1)
    for c in truth.unique():
        labels[(truth == c).nonzero().flatten()[:GLYPHS_LABELS_PER_CLASS]] = c
    start = time.perf_counter()
    graph = knn_graph(torch.nn.functional.normalize(pixels, dim=1), K)
    return graph, labels, truth, time.perf_counter() - start


def _graph(kind: str, n: int):
    if kind == "glyphs":
        return glyphs_graph(n)
    graph, labels, seconds = make_graph(n)
    return graph, labels, None, seconds


def _worker(kind: str, n: int, solver: str, part_size: int, local_factor: float, threads: int, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from dmlkit.targets import propagation as prop

    graph, labels, truth, knn_seconds = _graph(kind, n)
    start, cpu = time.perf_counter(), time.process_time()
    result = prop.propagate(graph, labels, GAMMA, solver=solver, part_size=part_size, local_factor=local_factor)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    queue.put({"seconds": seconds, "cpu_seconds": cpu_seconds, "knn_seconds": knn_seconds,
               "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "affinity": result.affinity.numpy(), "neighbours": graph.neighbours.numpy(),  # numpy: torch tensors
               "truth": None if truth is None else truth.numpy()})  # would cross as fds that die with the child


def run(kind: str, n: int, solver: str, threads: int, part_size: int = 0, local_factor: float = 1.0) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(kind, n, solver, part_size, local_factor, threads, queue))
    proc.start()
    while True:  # read before joining: a child blocks until its (large) result leaves the pipe
        try:
            out = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the {solver} propagation of {kind} n={n} failed (exit code {proc.exitcode})")
    proc.join()
    return out


def dense_reference(kind: str, n: int, threads: int, cache: Path | None) -> dict:
    import torch

    path = cache / f"dense-{kind}-n{n}.pt" if cache else None
    if path is not None and path.exists():
        return torch.load(path, weights_only=False)
    out = run(kind, n, "dense", threads)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def triplet_metrics(neighbours, affinity, dense: dict | None, truth) -> dict:
    """Agreement with the dense solve's triplets and, given true classes, the triplets' quality."""
    import torch

    from dmlkit.targets.propagation import mine_triplets

    neighbours, affinity = torch.as_tensor(neighbours), torch.as_tensor(affinity)
    truth = None if truth is None else torch.as_tensor(truth)
    n, k = neighbours.shape
    triplets = mine_triplets(neighbours, affinity)
    metrics = {}
    if dense is not None:
        reference = mine_triplets(neighbours, torch.as_tensor(dense["affinity"]))
        positives = torch.sort(triplets[:, 1].view(n, k // 2), 1).values
        metrics = {"same_triplets_fraction": float((triplets == reference).all(1).double().mean()),
                   "same_positive_set_fraction": float(
                       (positives == torch.sort(reference[:, 1].view(n, k // 2), 1).values).all(1).double().mean()),
                   "max_abs_diff": float((affinity - torch.as_tensor(dense["affinity"])).abs().max())}
    if truth is not None:  # the fractions `dmlkit quality` reports
        from dmlkit.evaluation.quality import triplet_fractions

        fractions = triplet_fractions(triplets, truth)
        metrics.update({key: fractions[key] for key in ("positive_same_class", "negative_same_class", "correct")})
    return metrics


def _row(kind: str, n: int, method: str, setting: str, threads: int, out: dict, metrics: dict, **extra) -> dict:
    return {"method": method, "dataset": f"{kind}-n{n}", "protocol": setting, "seed": 0, "n": n, "k": K,
            "gamma": GAMMA, "threads": threads, "seconds": round(out["seconds"], 2),
            "cpu_seconds": round(out["cpu_seconds"], 2), "knn_seconds": round(out["knn_seconds"], 2),
            "peak_rss_gib": round(out["peak_rss_gib"], 3), "extrapolated": False,
            "load_average_1min": round(os.getloadavg()[0], 1), "metrics": metrics, **extra}


def measure(kind: str, n: int, settings: list[tuple[int, float]], args: argparse.Namespace) -> list[dict]:
    import torch

    dense = dense_reference(kind, n, args.threads, args.dense_cache) if n <= args.dense_max else None
    rows = []
    if dense is not None:
        rows.append(_row(kind, n, "dense", "exact", args.threads, dense,
                         triplet_metrics(dense["neighbours"], dense["affinity"], dense, dense["truth"])))
        by_rank = -torch.arange(K, dtype=torch.float64).expand(n, K).clone()  # the kNN order, no propagation
        rows.append({**rows[0], "method": "knn-order", "protocol": "no propagation", "seconds": None,
                     "cpu_seconds": None, "peak_rss_gib": None, "metrics": triplet_metrics(dense["neighbours"], by_rank, dense, dense["truth"])})
    for part_size, local_factor in settings:
        out = run(kind, n, "partitioned", args.threads, part_size, local_factor)
        rows.append(_row(kind, n, "partitioned", f"part_size={part_size},local_factor={local_factor}", args.threads, out,
                         triplet_metrics(out["neighbours"], out["affinity"], dense, out["truth"]),
                         part_size=part_size, local_factor=local_factor,
                         target="n=60,000 within 120 s and 4 GiB on 2 cores"))
        print(f"[{kind} n={n} {rows[-1]['protocol']}] {rows[-1]['seconds']} s ({rows[-1]['cpu_seconds']} s CPU), "
              f"{rows[-1]['peak_rss_gib']} GiB, {rows[-1]['metrics']}", file=sys.stderr, flush=True)
    save_rows("propagation_partitioned", rows, key=("method", "dataset", "protocol", "seed", "threads"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", nargs="+", choices=("synthetic", "glyphs"), default=["synthetic", "glyphs"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[9100, 60000])
    parser.add_argument("--settings", nargs="+", default=["250:4", "1500:1"],
                        help="part_size:local_factor pairs (the first is SSDML's default)")
    parser.add_argument("--dense-max", type=int, default=9100, help="largest n also solved densely")
    parser.add_argument("--dense-cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    settings = [(int(s.split(":")[0]), float(s.split(":")[1])) for s in args.settings]
    rows = []
    for kind in args.graphs:
        for n in args.sizes:
            if kind == "glyphs" and n > 11877:  # the glyphs variant holds 11,877 images
                continue
            rows += measure(kind, n, settings, args)

    def metric(key):
        return (key.replace("_fraction", ""), lambda r: r["metrics"].get(key))

    print(markdown_table(rows, ["dataset", "method", "protocol", "seconds", "cpu_seconds", "peak_rss_gib",
                                metric("same_triplets_fraction"), metric("same_positive_set_fraction"),
                                metric("correct")], digits=3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
