"""Shared helpers for ``benchmarks/*.py``: machine string, git commit, results file, markdown table, and the
backbone weights of a finished run (``--ssl-init``).

Results files follow DESIGN.md ("Benchmarks and results")::

    {"benchmark": name, "machine": ..., "commit": ..., "date": "YYYY-MM-DD", "rows": [...]}

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
import os
import platform
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_KEY = ("method", "dataset", "protocol", "seed")
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


def results_path(benchmark: str) -> Path:
    return RESULTS_DIR / f"{benchmark}.json"


def load_results(benchmark: str) -> dict:
    """The results file of ``benchmark`` (an empty one when missing)."""
    path = results_path(benchmark)
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


def save_rows(benchmark: str, rows: Sequence[Mapping], key: Sequence[str] = DEFAULT_KEY) -> dict:
    """Replace the rows of ``benchmarks/results/<benchmark>.json`` that share ``key`` with ``rows``.

    Other rows are kept; machine, commit and date are refreshed. The file is written to a temporary
    name and renamed, so a crash never leaves half a file, under a lock, so processes saving at once
    never drop each other's rows. Returns the written content.
    """
    path = results_path(benchmark)
    with _locked(path):
        data = load_results(benchmark)
        new_keys = {tuple(r.get(k) for k in key) for r in rows}
        kept = [r for r in data.get("rows", []) if tuple(r.get(k) for k in key) not in new_keys]
        data.update({"benchmark": benchmark, "machine": machine(), "commit": commit(),
                     "date": datetime.date.today().isoformat(), "rows": kept + list(rows)})
        tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    return data


def seed_suffix(seed: int) -> str:
    """``""`` for seed 0 (run directories keep the names earlier runs and SLADE's ``--ssl-init`` use),
    ``"-seed1"`` for seed 1, and so on."""
    return f"-seed{seed}" if seed else ""


def seeded_run_name(name: str, protocol: str, seed: int) -> str:
    """Run directory of one benchmark row: ``stml-zero-shot``, ``stml-zero-shot-seed1``, ..."""
    return f"{name}-{protocol}{seed_suffix(seed)}"


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
