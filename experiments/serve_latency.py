"""Does one `dmlkit serve` query over N = 100,000 stored 128-d embeddings answer within issue 26's 200 ms
on 2 cores?

`dmlkit serve` latency: one query over N = 100,000 stored 128-d embeddings (issue 26's target: < 200 ms
on 2 cores).

Seeded synthetic embeddings (10,000 classes of 10, unit vectors, as a trained run stores them). Rows:

* ``serve-index[BACKEND]``: :meth:`dmlkit.serve.index.RetrievalIndex.query_item` (top-8 through
  :func:`dmlkit.evaluation.knn.knn_search`, self removed, class names and scores attached), the call
  behind ``/api/query``;
* ``serve-http[BACKEND]``: the same query as a GET ``/api/query?index=I&k=8`` to the real server
  (ThreadingHTTPServer, JSON encoding, a fresh connection per request);
* ``serve-startup[torch]``: scoring every one of the N queries (R@1 and AP, one chunked torch search
  of max R = 9 neighbours, whatever the click backend), which ``dmlkit serve`` does once before it
  listens (embedding excluded); only with ``--startup``.

``seconds`` is the median wall time of one call over ``--repeats`` random queries; ``p95_seconds`` and
``cpu_seconds`` (median user + system CPU time of the process per call) come with it.

    python experiments/serve_latency.py [--quick] [--threads 2] [--repeats 50] [--startup]

``--quick``: N = 10,000.
"""
from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

import numpy as np
import torch
from _common import EXPERIMENT_RESULTS_DIR, markdown_table, save_seed_rows

from dmlkit.serve.index import RetrievalIndex
from dmlkit.serve.server import ServeHTTPServer

DIM, PER_CLASS, K = 128, 10, 8


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) // PER_CLASS
    centres = torch.randn(n // PER_CLASS + 1, DIM, generator=g)
    x = torch.nn.functional.normalize(centres[labels] + 0.7 * torch.randn(n, DIM, generator=g), dim=1)
    return x, labels.numpy()


def timed(fn, repeats: int) -> dict[str, float]:
    wall, cpu = [], []
    for i in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn(i)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"seconds": float(np.median(wall)), "p95_seconds": float(np.percentile(wall, 95)),
            "cpu_seconds": float(np.median(cpu)), "repeats": repeats}


def http_get(address: tuple[str, int], path: str) -> bytes:
    connection = http.client.HTTPConnection(*address, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {body[:200]!r}")
    return body


def measure(n: int, backend: str, repeats: int, startup: bool) -> list[dict]:
    startup = startup and backend == "torch"  # the start-up scoring always runs the evaluator's torch search
    x, labels = data(n)
    queries = np.random.default_rng(1).integers(0, n, size=repeats)
    start = time.perf_counter()
    cpu = time.process_time()
    index = RetrievalIndex(x, labels, backend=backend, score_queries=startup)
    scored = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "repeats": 1}
    index.query_item(0, K)  # warm-up (faiss import, first allocation)
    in_process = timed(lambda i: index.query_item(int(queries[i]), K), repeats)
    server = ServeHTTPServer(("127.0.0.1", 0), SimpleNamespace(index=index))  # /api/query reads view.index only
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = server.server_address[:2]
        http_get(address, "/api/query?index=0&k=8")
        over_http = timed(lambda i: http_get(address, f"/api/query?index={int(queries[i])}&k={K}"), repeats)
    finally:
        server.shutdown()
        server.server_close()
    dataset = f"synthetic-{n // 1000}k-{DIM}d"
    means = index.means()
    rows = []
    timings = [("serve-index", in_process), ("serve-http", over_http)] + ([("serve-startup", scored)] if startup else [])
    for name, result in timings:
        protocol = "all queries scored (R@1, AP)" if name == "serve-startup" else f"one query, top-{K}"
        rows.append({"method": f"{name}[{backend}]", "dataset": dataset, "protocol": protocol,
                     "metrics": {"recall@1": means["recall@1"], "map@r": means["map@r"]} if startup else {},
                     **result, "seed": 0,
                     "items": n, "dim": DIM, "backend": backend, "threads": torch.get_num_threads(),
                     "notes": f"{n // PER_CLASS} classes of {PER_CLASS}, unit vectors; wall time median of "
                              f"{result['repeats']} (shared machine: see cpu_seconds)"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10,000 instead of 100,000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--startup", action="store_true", help="also time scoring every query at start-up")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    n = 10_000 if args.quick else 100_000
    rows = [row for backend in ("faiss", "torch") for row in measure(n, backend, args.repeats, args.startup)]
    save_seed_rows("serve_latency", rows, EXPERIMENT_RESULTS_DIR)
    print(markdown_table(rows, ["method", "dataset", "protocol", ("ms (median)", lambda r: 1000 * r["seconds"]),
                                ("ms p95", lambda r: 1000 * r.get("p95_seconds", r["seconds"])),
                                ("CPU ms", lambda r: 1000 * r["cpu_seconds"])], digits=1))


if __name__ == "__main__":
    main()
