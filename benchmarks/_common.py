"""Shared helpers for ``benchmarks/*.py``: machine string, git commit, results file, markdown table, and the
backbone weights of a finished run (``--ssl-init``).

Results files follow DESIGN.md ("Benchmarks and results")::

    {"benchmark": name, "machine": ..., "commit": ..., "date": "YYYY-MM-DD", "rows": [...]}

Rows of training results follow the harness's one row schema (``benchmarks/harness.py``): one row per
(method, dataset, protocol, quick) with ``seeds``, ``metrics`` (each mean and ``<key>_std``, the sample std),
``seconds`` (mean per seed) and ``per_seed`` (each seed's metrics, seconds and measured extras).
:func:`schema_rows` builds such rows from one flat row per seed, :func:`flat_rows` undoes it, and
:func:`save_seed_rows` merges new seeds into a results file.

Usage from a benchmark script (run from the repository root)::

    from _common import ROOT, markdown_table, save_rows
    data = save_rows("stml", rows)                 # replaces rows with the same key, writes atomically
    print(markdown_table(rows, ["method", ("R@1", lambda r: r["metrics"]["recall@1"])]))
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
#: results of the one-off studies under ``experiments/``
EXPERIMENT_RESULTS_DIR = ROOT / "experiments" / "results"
DEFAULT_KEY = ("method", "dataset", "protocol", "seed")
#: a schema row's identity; a flat (one-seed) row adds ``seed``
ROW_KEY = ("method", "dataset", "protocol", "quick")
#: fields a schema row holds once; every other field of a flat row is a per-seed measurement
ROW_FIELDS = ("method", "base_method", "preset", "dataset", "protocol", "quick", "notes", "options", "paper_value")
#: suffix of rows and run directories started from a label-free run's backbone (``--ssl-init``)
SSL_SUFFIX = "[ssl-init]"

Column = str | tuple[str, str | Callable[[Mapping], object]]


def machine() -> str:
    """E.g. ``"2-core CPU (Intel Xeon), no GPU, torch threads 2"`` or ``"NVIDIA H100, 16 CPU cores"``."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {cores} CPU cores"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cores}-core CPU ({cpu}), no GPU, torch threads {torch.get_num_threads()}"


def commit() -> str:
    """Short hash of HEAD, with ``+dirty`` when tracked files differ; ``"unknown"`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, check=False).returncode != 0
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp() -> dict[str, str]:
    """Where and from what code a result comes: ``machine``, ``commit`` and ``date``."""
    return {"machine": machine(), "commit": commit(), "date": datetime.date.today().isoformat()}


def results_path(benchmark: str, folder: Path | None = None) -> Path:
    return (folder or RESULTS_DIR) / f"{benchmark}.json"


def load_results(benchmark: str, folder: Path | None = None) -> dict:
    """The results file of ``benchmark`` (an empty one when missing)."""
    path = results_path(benchmark, folder)
    if path.is_file():
        return json.loads(path.read_text())
    return {"benchmark": benchmark, "rows": []}


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path.lock`` for the block: benchmark processes run side by side (one per
    core) save into the same results file, and each read-modify-write must see the others' rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def save_rows(benchmark: str, rows: Sequence[Mapping], key: Sequence[str] = DEFAULT_KEY,
              folder: Path | None = None) -> dict:
    """Replace the rows of ``benchmarks/results/<benchmark>.json`` that share ``key`` with ``rows``.

    Other rows are kept; machine, commit and date are refreshed. The file is written to a temporary
    name and renamed, so a crash never leaves half a file, under a lock, so processes saving at once
    never drop each other's rows. Returns the written content.
    """
    path = results_path(benchmark, folder)
    with _locked(path):
        data = load_results(benchmark, folder)
        new_keys = {tuple(r.get(k) for k in key) for r in rows}
        kept = [r for r in data.get("rows", []) if tuple(r.get(k) for k in key) not in new_keys]
        data.update({"benchmark": benchmark, **stamp(), "rows": kept + list(rows)})
        _write(path, data)
    return data


def _spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (0 for one value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def schema_rows(flat: Iterable[Mapping]) -> list[dict]:
    """Schema rows from flat rows (one per seed, each with ``seed``, ``metrics`` and ``seconds``), grouped by
    :data:`ROW_KEY` in order of first appearance. Fields of :data:`ROW_FIELDS` that differ between the
    seeds stay in ``per_seed``, as do the
    seeds' extras (``machine``, ``commit``, ``date``, ``images_per_second``, ...)."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in flat:
        groups.setdefault(tuple(bool(row.get(k)) if k == "quick" else row.get(k) for k in ROW_KEY), []).append(row)
    out = []
    for seeds in groups.values():
        shared = {k: seeds[0].get(k) for k in ROW_FIELDS
                  if all(json.dumps(r.get(k), sort_keys=True) == json.dumps(seeds[0].get(k), sort_keys=True)
                         for r in seeds)}
        shared["quick"] = bool(shared.get("quick"))
        metrics: dict[str, float] = {}
        for key in dict.fromkeys(k for r in seeds for k in r.get("metrics", {})):
            values = [float(r["metrics"][key]) for r in seeds if r.get("metrics", {}).get(key) is not None]
            if values:
                metrics[key], metrics[f"{key}_std"] = _spread(values)
        seconds = [float(r["seconds"]) for r in seeds if r.get("seconds") is not None]
        per_seed = [{"seed": r.get("seed", 0), **{k: v for k, v in r.items() if k not in shared and k != "seed"}}
                    for r in seeds]
        out.append({"method": shared.pop("method"), "base_method": shared.pop("base_method", None),
                    "preset": shared.pop("preset", None), "dataset": shared.pop("dataset"),
                    "protocol": shared.pop("protocol"), "seeds": [r.get("seed", 0) for r in seeds],
                    "metrics": metrics, "seconds": statistics.mean(seconds) if seconds else None,
                    "per_seed": per_seed, "quick": shared.pop("quick"), "notes": shared.pop("notes", None),
                    **{k: v for k, v in shared.items() if v is not None}})
    return out


def flat_rows(rows: Iterable[Mapping]) -> list[dict]:
    """One row per seed from schema rows (rows without ``per_seed`` pass unchanged): the row's shared
    fields with the seed's ``seed``, ``metrics``, ``seconds`` and extras, ``seeds`` = ``[seed]``."""
    out = []
    for row in rows:
        if "per_seed" not in row:
            out.append(dict(row))
            continue
        shared = {k: v for k, v in row.items() if k not in ("per_seed", "metrics", "seconds", "seeds")}
        out += [{**shared, **seed, "seeds": [seed["seed"]]} for seed in row["per_seed"]]
    return out


def save_seed_rows(benchmark: str, flat: Sequence[Mapping], folder: Path | None = None) -> dict:
    """Merge flat one-seed rows into the schema rows of a results file: a seed re-run replaces that seed
    (same method, dataset, protocol, quick and seed), the other seeds and rows stay."""
    path = results_path(benchmark, folder)
    with _locked(path):
        data = load_results(benchmark, folder)

        def key(row: Mapping) -> tuple:
            return (*(row.get(k) for k in ROW_KEY[:3]), bool(row.get("quick")), row.get("seed", 0))

        where = stamp()
        new = [{**r, **where} for r in flat]
        replaced = {key(r) for r in new}
        old = [{**r, "seed": r.get("seed", (r.get("seeds") or [0])[0])} for r in flat_rows(data.get("rows", []))]
        kept = [{k: v for k, v in r.items() if k != "seeds"} for r in old if key(r) not in replaced]
        data.update({"benchmark": benchmark, **where, "rows": schema_rows(kept + new)})
        _write(path, data)
    return data


def seed_suffix(seed: int) -> str:
    """``""`` for seed 0 (run directories keep the names earlier runs and SLADE's ``--ssl-init`` use),
    ``"-seed1"`` for seed 1, and so on."""
    return f"-seed{seed}" if seed else ""


def _cell(value: object, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Iterable[Mapping], columns: Sequence[Column], digits: int = 4) -> str:
    """A markdown table; each column is a row key, or ``(header, key or function of the row)``."""
    specs = [(c, c) if isinstance(c, str) else c for c in columns]
    lines = ["| " + " | ".join(h for h, _ in specs) + " |", "|" + "---|" * len(specs)]
    for row in rows:
        cells = [_cell(get(row) if callable(get) else row.get(get), digits) for _, get in specs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def backbone_weights_of_run(run_dir: Path, out: Path) -> Path:
    """Write the (student) backbone of a finished dmlkit run as a weights file ``pretrained=`` loads."""
    from dmlkit.engine.checkpoint import atomic_torch_save, load_checkpoint_dict

    state = load_checkpoint_dict(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    prefixes = ("method.student.backbone.", "method.backbone.")
    for prefix in prefixes:
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            atomic_torch_save({k: v.contiguous() for k, v in weights.items()}, out)
            return out
    raise ValueError(f"{run_dir}: no backbone weights (looked for keys starting with {' or '.join(prefixes)}); pass a run of a method with a backbone")


#: the synthetic SSDML propagation graphs of propagation_scaling.py and propagation_partitioned.py
K, GAMMA, DIM, CLASSES, LABELS_PER_CLASS, INTRINSIC = 10, 0.99, 128, 10, 10, 8


def make_graph(n: int, seed: int = 0):
    """10 classes of unit 128-d points on their own 8-d subspaces, 10 labels each; (kNN graph, labels, seconds)."""
    import torch

    from dmlkit.targets.propagation import knn_graph

    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=gen)
    bases = torch.randn(CLASSES, INTRINSIC, DIM, generator=gen) / math.sqrt(INTRINSIC)  # per-class 8-d subspaces
    truth = torch.arange(n) % CLASSES
    coords = torch.randn(n, 1, INTRINSIC, generator=gen)
    z = torch.nn.functional.normalize(centres[truth] + 3.0 * (coords @ bases[truth]).squeeze(1), dim=1)
    labels = torch.full((n,), -1)
    labels[: CLASSES * LABELS_PER_CLASS] = truth[: CLASSES * LABELS_PER_CLASS]
    start = time.perf_counter()
    graph = knn_graph(z, K)
    return graph, labels, time.perf_counter() - start
