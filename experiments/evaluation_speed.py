"""How fast is dmlkit.evaluation.evaluate against pytorch-metric-learning's AccuracyCalculator, same metrics, at 10k and 60k items?

Evaluation speed: dmlkit.evaluation.evaluate vs pytorch-metric-learning's AccuracyCalculator.

Both evaluate the same seeded synthetic embeddings, compared to self (Q = G, self removed):

* ``10k``: N = 10,000, 10 classes, 128-d (MNIST-sized);
* ``60k``: N = 60,000, 11,000 classes, 512-d (SOP-sized).

dmlkit computes the full set (Recall@1/10/100/1000, NMI, P@1, RP, MAP@R) with its defaults (torch
kNN in blocks; torch Lloyd k-means, 20 iterations, seed 0, k-means++ init up to 1,024 clusters and a
random sample above). AccuracyCalculator runs with
the settings its documentation recommends for R-Precision / MAP@R, ``k="max_bin_count"``, and its
default faiss kNN (IndexFlatL2) and faiss k-means; it has no Recall@K for K > 1, so it computes NMI,
P@1, RP and MAP@R.

Every measurement runs in a fresh subprocess (tracemalloc cannot see torch/faiss buffers): the worker
builds the data, reads ``ru_maxrss`` (the peak resident set so far), runs the evaluation, and reads
``ru_maxrss`` again. ``peak_rss_mb`` is the process's peak; ``extra_rss_mb`` the growth of that peak
during the evaluation (data, imports and interpreter excluded). ``seconds`` is the wall time of the
call, ``cpu_seconds`` its user + system CPU time (less sensitive to other load on a shared machine;
cpu_seconds / threads approximates the wall time on an otherwise idle machine).

    python experiments/evaluation_speed.py [--quick] [--threads 2] [--sizes 10k 60k] [--repeats 3]

With ``--repeats R`` each size is measured as R side-by-side pairs (both tools, one after the other)
and the pair with the median ratio is recorded, with every ratio in ``seconds_ratios_vs_pml`` and
the 1-minute load average at the end in ``load_average`` (the machine is shared).

NMI (k-means with one cluster per class: 11,000 clusters at SOP size) runs in a child process of the
worker and is stopped after ``--nmi-budget`` seconds (default 600); a stopped run has no ``nmi``,
``nmi_over_budget: true`` and lower-bound times.

``--quick`` shrinks the 60k case to N = 6,000 with 1,100 classes (same 512-d, same class sizes).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

from _common import ROOT, markdown_table, save_rows

SIZES = {  # name -> (N, classes, dim, noise, recall_at); noise chosen so the metrics are far from 0 and 1
    "10k": (10_000, 10, 128, 2.5, (1, 10, 100, 1000)),
    "60k": (60_000, 11_000, 512, 2.4, (1, 10, 100, 1000)),
}
QUICK_SIZES = {"10k": SIZES["10k"], "60k": (6_000, 1_100, 512, 2.4, (1, 10, 100, 1000))}
TOOLS = ("dmlkit", "pml")
SEED = 0
NMI_BUDGET_S = 600.0


def make_data(n: int, classes: int, dim: int, noise: float, seed: int = SEED):
    """Class centres ~ N(0, I), items = centre + N(0, noise² I); labels a seeded shuffle of i mod classes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    x = centres[labels] + noise * rng.standard_normal((n, dim), dtype=np.float32)
    return x, labels


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def setup(size: str, quick: bool, threads: int):
    """Thread limits and the seeded data of ``size``: ``(x, y, classes, noise, recall_at)``."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    n, classes, dim, noise, recall_at = (QUICK_SIZES if quick else SIZES)[size]
    x_np, y_np = make_data(n, classes, dim, noise)
    return torch.from_numpy(x_np), torch.from_numpy(y_np), classes, noise, recall_at


def nmi_worker(tool: str, size: str, quick: bool, threads: int) -> dict:
    """The NMI half of a measurement (its own process, so that it can be stopped at the budget)."""
    x, y, classes, _, _ = setup(size, quick, threads)
    if tool == "dmlkit":
        from dmlkit.evaluation import kmeans, nmi_score

        run = lambda: nmi_score(y, kmeans(x, classes, iters=20, seed=0))
    else:
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(include=("NMI",), k="max_bin_count")
        run = lambda: calc.get_accuracy(x, y)["NMI"]
    base, c0, t0 = peak_mb(), cpu_seconds(), time.perf_counter()
    value = run()
    return {"nmi": float(value), "seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - c0,
            "peak_rss_mb": peak_mb(), "extra_rss_mb": peak_mb() - base}


def timed_nmi(tool: str, size: str, quick: bool, threads: int, budget: float) -> dict | None:
    """Run :func:`nmi_worker` in a subprocess; ``None`` when it runs past ``budget`` seconds."""
    cmd = [sys.executable, os.path.abspath(__file__), "--nmi-worker", tool, size, "--threads", str(threads)]
    cmd += ["--quick"] if quick else []
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 120, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"NMI {tool} {size} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out if out["seconds"] <= budget else None


def worker(tool: str, size: str, quick: bool, threads: int, nmi_budget: float = NMI_BUDGET_S) -> dict:
    """One measurement: retrieval timed in this fresh process, NMI in a child within ``nmi_budget``."""
    x, y, classes, noise, recall_at = setup(size, quick, threads)
    n, dim = x.shape
    if tool == "dmlkit":
        from dmlkit.evaluation import evaluate

        evaluate(x[:50], y[:50] % 5, recall_at=(1,), nmi=False)  # warm-up: imports, thread pools
        base, c0 = peak_mb(), cpu_seconds()
        t0 = time.perf_counter()
        metrics = evaluate(x, y, recall_at=recall_at, nmi=False)
        t1 = time.perf_counter()
        metrics.pop("num_lone_queries")
    else:
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        retrieval = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                                       k="max_bin_count")
        retrieval.get_accuracy(x[:50], y[:50] % 5)  # warm-up
        base, c0 = peak_mb(), cpu_seconds()
        t0 = time.perf_counter()
        out = retrieval.get_accuracy(x, y)  # reference = query, ref_includes_query=True
        t1 = time.perf_counter()
        metrics = {"precision@1": out["precision_at_1"], "r_precision": out["r_precision"],
                   "map@r": out["mean_average_precision_at_r"]}
    peak, cpu = peak_mb(), cpu_seconds() - c0
    nmi = timed_nmi(tool, size, quick, threads, nmi_budget)
    if nmi is not None:
        metrics["nmi"] = nmi["nmi"]
    nmi_seconds = nmi["seconds"] if nmi else nmi_budget
    return {
        "method": "dmlkit.evaluate" if tool == "dmlkit" else "pml.AccuracyCalculator",
        "dataset": f"synthetic-{n}x{dim}-{classes}c",
        "protocol": "compared-to-self",
        "metrics": {k: float(v) for k, v in metrics.items()},
        "seconds": (t1 - t0) + nmi_seconds,
        "retrieval_seconds": t1 - t0,
        "nmi_seconds": nmi_seconds,
        "nmi_over_budget": nmi is None,
        "cpu_seconds": cpu + (nmi["cpu_seconds"] if nmi else 0.0),
        "peak_rss_mb": round(max(peak, nmi["peak_rss_mb"] if nmi else 0.0), 1),
        "extra_rss_mb": round(max(peak - base, nmi["extra_rss_mb"] if nmi else 0.0), 1),
        "seed": SEED,
        "noise": noise,
        "threads": threads,
        "size": size,
        "quick": quick,
        "notes": ("full set: R@1/10/100/1000, NMI, P@1, RP, MAP@R; torch kNN + torch k-means"
                  if tool == "dmlkit" else "k='max_bin_count'; faiss IndexFlatL2 kNN + faiss k-means; "
                  "NMI, P@1, RP, MAP@R (no Recall@K>1)")
                 + ("" if nmi else f"; NMI stopped at the {nmi_budget:g} s budget (seconds and cpu_seconds are lower bounds)"),
    }


def measure(tool: str, size: str, quick: bool, threads: int, timeout: int, nmi_budget: float = NMI_BUDGET_S) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", tool, size, "--threads", str(threads)]
    cmd += ["--quick"] if quick else []
    cmd += ["--nmi-budget", str(nmi_budget)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} {size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrink the SOP-sized case to N=6,000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
    parser.add_argument("--nmi-budget", type=float, default=NMI_BUDGET_S,
                        help="seconds allowed to each NMI (k-means) measurement; past it NMI is reported missing")
    parser.add_argument("--repeats", type=int, default=1, help="side-by-side pairs per size; the median ratio is kept")
    parser.add_argument("--only", choices=TOOLS, help="measure one tool and replace only its row (no ratios)")
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--nmi-worker", nargs=2, metavar=("TOOL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.quick, args.threads, args.nmi_budget)))
        return 0
    if args.nmi_worker:
        print(json.dumps(nmi_worker(args.nmi_worker[0], args.nmi_worker[1], args.quick, args.threads)))
        return 0
    rows = []
    for size in args.sizes:
        if args.only:
            row = measure(args.only, size, args.quick, args.threads, args.timeout, args.nmi_budget)
            row["protocol"] += ", measured alone"  # keeps the side-by-side rows and their ratios
            rows.append(row)
            save_rows("evaluation_speed", [row], key=("method", "dataset", "protocol", "seed", "threads"))
            continue
        pairs = []
        for _ in range(args.repeats):  # pml then dmlkit, back to back; the pair of median ratio is kept
            pair = {tool: measure(tool, size, args.quick, args.threads, args.timeout, args.nmi_budget) for tool in TOOLS}
            pairs.append((pair["dmlkit"]["seconds"] / pair["pml"]["seconds"], pair))
        pairs.sort(key=lambda rp: rp[0])
        ours, ref = pairs[len(pairs) // 2][1]["dmlkit"], pairs[len(pairs) // 2][1]["pml"]
        ours["seconds_ratio_vs_pml"] = round(ours["seconds"] / ref["seconds"], 3)
        ours["seconds_ratios_vs_pml"] = [round(r, 3) for r, _ in pairs]  # every repeat, sorted
        ours["load_average"] = os.getloadavg()[0]
        ours["peak_rss_ratio_vs_pml"] = round(ours["peak_rss_mb"] / ref["peak_rss_mb"], 3)
        ours["max_abs_diff_vs_pml"] = max(abs(ours["metrics"][k] - ref["metrics"][k])
                                          for k in ("precision@1", "r_precision", "map@r"))
        rows += [ours, ref]
        save_rows("evaluation_speed", [ours, ref], key=("method", "dataset", "protocol", "seed", "threads"))
        print(f"[{size}] dmlkit {ours['seconds']:.1f}s vs pml {ref['seconds']:.1f}s", file=sys.stderr, flush=True)
    m = lambda key: (key, lambda r: r["metrics"].get(key))
    print(markdown_table(rows, [
        "method", "dataset", ("seconds", lambda r: round(r["seconds"], 1)),
        ("kNN+retrieval s", lambda r: round(r["retrieval_seconds"], 1)), ("NMI s", lambda r: round(r["nmi_seconds"], 1)),
        ("CPU s", lambda r: round(r["cpu_seconds"], 1)),
        ("peak RSS MB", "peak_rss_mb"), ("extra RSS MB", "extra_rss_mb"),
        ("time ratio", lambda r: r.get("seconds_ratio_vs_pml")),
        m("recall@1"), m("recall@1000"), m("nmi"), m("precision@1"), m("r_precision"), m("map@r"),
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
