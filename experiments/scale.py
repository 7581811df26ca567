"""Do a method refresh (neighbour table) and the full evaluation fit in time and memory at 120,000 items of 512 dimensions?

Scale: a method refresh (neighbour table) and the full evaluation on 120,000 items of 512 dimensions.

Two measurements on the same seeded synthetic "clustered" embeddings (class centres ~ N(0, I), items =
centre + N(0, 2.4² I), 1,000 classes of 120 items; 120,000 items is the size of Stanford Online
Products, train + test):

* ``refresh``: :func:`dmlkit.evaluation.knn.refresh_knn` with k = 5, what STML/PLM run over the
  whole training split at every epoch start (exact kNN in blocks, never N x N). Checked against
  brute force on 256 random rows (the distances it returns are Euclidean, not squared).
* ``evaluation``: :func:`dmlkit.evaluate` with the full metric set at SOP's Recall@K (1, 10, 100,
  1000), NMI (k-means with one cluster per class), P@1, R-Precision, MAP@R, compared to self.

Each measurement runs in a fresh subprocess pinned to ``--threads`` torch threads. The parent waits
for it with ``os.wait4`` and reads that child's ``ru_maxrss`` (the peak resident set of exactly that
process, the per-child form of ``getrusage(RUSAGE_CHILDREN)``); the child also reports its peak
before the measured call (interpreter, imports, the data), so ``extra_rss_mb`` is what the call
itself added. ``seconds`` is the wall time of the call, ``cpu_seconds`` its user + system CPU time;
on a shared machine, ``cpu_seconds / threads`` estimates the wall time on an idle one
(``idle_seconds_estimate``). Target: under 8 GiB and 10 minutes on 2 cores.

    python experiments/scale.py [--quick] [--threads 2] [--items 120000] [--classes 1000]

``--quick`` uses 12,000 items in 100 classes (a smoke check; its rows are stored under their own
dataset name).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

from _common import EXPERIMENT_RESULTS_DIR, ROOT, markdown_table, save_seed_rows

SEED = 0
DIM = 512
NOISE = 2.4
NEIGHBOURS = 5
RECALL_AT = (1, 10, 100, 1000)
TARGET_GIB, TARGET_SECONDS = 8.0, 600.0
MEASUREMENTS = ("refresh", "evaluation")


def make_data(n: int, classes: int, dim: int = DIM, noise: float = NOISE, seed: int = SEED):
    """``(x float32 [n, dim], labels int64 [n])``: centres ~ N(0, I), items = centre + noise · N(0, I),
    labels a seeded shuffle of ``i mod classes``. Built in float32 blocks (no float64 copy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):
        stop = min(n, start + 8192)
        x[start:stop] = centres[labels[start:stop]] + noise * rng.standard_normal((stop - start, dim), dtype=np.float32)
    return x, labels


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(measurement: str, n: int, classes: int, threads: int) -> dict:
    """One timed call in this (fresh) process; returns its row without the parent's peak memory."""
    import torch

    torch.set_num_threads(threads)
    x_np, y_np = make_data(n, classes)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    extra: dict = {}
    if measurement == "refresh":
        from dmlkit.evaluation.knn import refresh_knn as neighbour_table

        neighbour_table(x[:64], NEIGHBOURS)  # warm-up: imports, thread pools
        base, c0, t0 = _peak_mb(), _cpu(), time.perf_counter()
        distances, indices = neighbour_table(x, NEIGHBOURS)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(SEED))[:256]
        exact, exact_idx = torch.cdist(x[rows], x).topk(NEIGHBOURS, largest=False)  # Euclidean, as returned
        extra = {"checked_rows": len(rows), "self_at_rank_0": bool((indices[:, 0] == torch.arange(n)).all()),
                 "max_abs_distance_error_vs_brute_force": float((distances[rows] - exact).abs().max()),
                 "neighbour_agreement_vs_brute_force": float((indices[rows] == exact_idx).float().mean()),
                 "table_shape": list(indices.shape)}
        metrics: dict = {}
        method = f"neighbour_table(k={NEIGHBOURS})"
    else:
        from dmlkit.evaluation import evaluate

        evaluate(x[:64], y[:64] % 4, recall_at=(1,))  # warm-up
        base, c0, t0 = _peak_mb(), _cpu(), time.perf_counter()
        metrics = evaluate(x, y, recall_at=RECALL_AT, seed=SEED)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        metrics = {k: float(v) for k, v in metrics.items() if k != "num_lone_queries"}
        method = "dmlkit.evaluate"
    return {
        "method": method,
        "dataset": f"synthetic-{n}x{DIM}-{classes}c",
        "protocol": measurement,
        "metrics": metrics,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "idle_seconds_estimate": cpu / threads,
        "before_call_rss_mb": round(base, 1),
        "threads": threads,
        "seed": SEED,
        "noise": NOISE,
        **extra,
    }


def measure(measurement: str, n: int, classes: int, threads: int, timeout: float) -> dict:
    """Run :func:`worker` in a fresh subprocess; add that process's peak RSS (``os.wait4``)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", measurement, "--items", str(n),
           "--classes", str(classes), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT, env=env)
        while True:  # reap the child ourselves: os.wait4 gives exactly its resource usage
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                proc.kill()
                os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise RuntimeError(f"{measurement} on {n} items ran past {timeout:.0f} s")
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{measurement} on {n} items failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    row = json.loads(stdout.strip().splitlines()[-1])
    peak = usage.ru_maxrss / 1024.0
    row.update({
        "peak_rss_mb": round(peak, 1),
        "extra_rss_mb": round(peak - row.pop("before_call_rss_mb"), 1),
        "process_seconds": time.perf_counter() - start,
        "within_target": peak / 1024.0 < TARGET_GIB and row["idle_seconds_estimate"] < TARGET_SECONDS,
        "notes": (f"peak RSS of the measuring process (os.wait4); target < {TARGET_GIB:.0f} GiB and "
                  f"< {TARGET_SECONDS / 60:.0f} min on {threads} cores; seconds = wall time on the machine as "
                  f"loaded at the time, idle_seconds_estimate = cpu_seconds / threads"),
    })
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12,000 items in 100 classes")
    parser.add_argument("--items", type=int, default=120_000)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=MEASUREMENTS, help="run one of the two measurements")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement")
    parser.add_argument("--no-save", action="store_true", help="print, do not write experiments/results/scale.json")
    parser.add_argument("--worker", choices=MEASUREMENTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n, classes = (12_000, 100) if args.quick else (args.items, args.classes)
    if args.worker:
        print(json.dumps(worker(args.worker, n, classes, args.threads)))
        return 0
    rows = []
    for measurement in [args.only] if args.only else MEASUREMENTS:
        rows.append(measure(measurement, n, classes, args.threads, args.timeout))
        print(f"{measurement}: {rows[-1]['seconds']:.1f} s wall, {rows[-1]['cpu_seconds']:.1f} s CPU, "
              f"peak {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
        if not args.no_save:
            save_seed_rows("scale", rows[-1:], EXPERIMENT_RESULTS_DIR)
    print(markdown_table(rows, [
        "protocol", "dataset", ("wall s", "seconds"), ("CPU s", "cpu_seconds"),
        ("idle 2-core s (est.)", "idle_seconds_estimate"), ("peak MB", "peak_rss_mb"), ("extra MB", "extra_rss_mb"),
        ("R@1", lambda r: r["metrics"].get("recall@1")), ("MAP@R", lambda r: r["metrics"].get("map@r")),
        ("NMI", lambda r: r["metrics"].get("nmi")), "within_target"], digits=3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
