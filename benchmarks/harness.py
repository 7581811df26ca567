"""The benchmark harness: run a suite declared as data, one result schema, one results file per suite.

    python -m benchmarks --suite glyphs [--quick] [--seeds 0 1 2] [--only stml initial]
    python -m benchmarks --list

A suite (``benchmarks/suites.py``) is a list of :class:`Entry` rows — method or preset, dataset,
protocol, seeds, settings and method options, and what ``--quick`` changes. Each entry runs once per
seed through ``dmlkit.train`` (``raw-pixels`` rows evaluate the L2-normalised pixels of the test split
instead) and becomes one row of ``benchmarks/results/<suite>.json``::

    {"method": "stml", "base_method": "stml", "preset": null, "dataset": "glyphs", "protocol": "standard",
     "seeds": [0, 1, 2], "metrics": {"recall@1": mean, "recall@1_std": sample std, ...},
     "seconds": mean wall time per seed,
     "per_seed": [{"seed": 0, "metrics": {...}, "seconds": ..., "machine": ..., "commit": ..., "date": ...,
                   "images_per_second": ..., "epochs": ..., "best": {...}, "history": [...]}],
     "quick": false, "notes": "...", "options": {...}, "paper_value": {...}, "fingerprint": "..."}

(``options`` and ``paper_value`` only where the entry has them; ``benchmarks/_common.py`` builds the rows,
docs/benchmarks.md describes them.)

Rows are keyed by (method, dataset, protocol, quick): a re-run replaces its own row and keeps the others.
A row is saved after every seed. Seeds already in the row are kept when the row's ``fingerprint`` (the
entry's preset, settings and options) is unchanged, so ``--seeds 1 2`` adds seeds to a row run with seed 0;
a changed entry starts its row afresh. ``--reuse`` reads a seed from its run directory when that run
finished with the same resolved configuration, instead of training it again (an interrupted suite
goes on where it stopped).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    ROW_KEY,
    backbone_weights_of_run,
    load_results,
    markdown_table,
    save_rows,
    schema_rows,
    stamp,
)

#: metrics every row reports (fractions in [0, 1])
METRIC_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r")
RAW_PIXELS = "raw-pixels"
#: per evaluated epoch, what a seed keeps of the run's history (convergence figures)
HISTORY_KEYS = ("epoch", "recall@1", "nmi", "val_map@r")


@dataclass(frozen=True)
class Entry:
    """One row of a suite.

    Attributes:
        row: the row's name in tables (``stml``, ``stml-512``, ``raw-pixels`` ...).
        method: the dmlkit method; ``"raw-pixels"`` evaluates the test split's pixels (no network).
        dataset, protocol: as ``dmlkit train`` spells them.
        preset: a shipped preset the settings start from (``dmlkit presets``), or None.
        seeds: training seeds; the row reports mean ± sample std over them.
        settings: ``dmlkit.train`` settings (epochs, batch_size, lr, labels_per_class, ...).
        options: method options (``--set`` names).
        quick: settings that replace ``settings`` under ``--quick`` (a smoke run, not a result); its
            ``options`` are added to ``options``.
        notes: why the entry is set up the way it is (budget, optimizer choice, ...).
        label: the protocol as the results name it (``unsupervised``: the standard protocol without labels;
            ``semi-supervised-10-per-class``), when it differs from ``protocol``.
        init_from: a finished run directory (relative to the repository) whose backbone initialises this
            entry (``options["pretrained"]``), e.g. a label-free run for ``[ssl-init]`` rows.
        paper_value: the paper's numbers for this row (fractions), shown beside ours.
    """

    row: str
    method: str
    dataset: str
    protocol: str = "standard"
    preset: str | None = None
    seeds: tuple[int, ...] = (0,)
    settings: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    quick: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    label: str | None = None
    init_from: str | None = None
    paper_value: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    entries: tuple[Entry, ...]


def train_settings(entry: Entry, seed: int, quick: bool) -> dict[str, Any]:
    """What ``dmlkit.train`` gets for one seed of ``entry``."""
    settings: dict[str, Any] = {"protocol": entry.protocol, "seed": seed, "progress": False, "pictures": False,
                                **entry.settings, **(entry.quick if quick else {})}
    if entry.preset:
        settings["preset"] = entry.preset
    options = {**entry.options, **(entry.quick.get("options", {}) if quick else {})}
    if options:
        settings["options"] = options
    return settings


def fingerprint(entry: Entry) -> str:
    """What makes two runs of an entry the same experiment (seeds aside)."""
    import json

    return json.dumps({"method": entry.method, "preset": entry.preset, "settings": dict(entry.settings),
                       "options": dict(entry.options)}, sort_keys=True)


def finished_run(out: Path, settings: Mapping[str, Any], method: str, dataset: str) -> dict[str, Any] | None:
    """The ``metrics.json`` of a finished run in ``out`` whose resolved configuration equals this one's, or None."""
    import json

    from dmlkit.engine.config import RunConfig, resolve_config

    path = out / "metrics.json"
    if not path.is_file():
        return None
    done = json.loads(path.read_text())
    wanted = resolve_config({"method": method, "dataset": dataset, **settings}).to_dict()
    ignored = {"out", "progress", "pictures", "threads", "num_workers", "picture_every"}
    config = {**done["config"], "options": _current_names(method, done["config"].get("options") or {})}
    defaults = RunConfig().to_dict()  # a setting newer than the run counts as its default there
    differ = [k for k, v in wanted.items()
              if k not in ignored and config.get(k, defaults.get(k)) != v]
    if differ:
        print(f"{out}: finished with other settings ({', '.join(differ)}); training again")
    return None if differ else done


def _current_names(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """A finished run's options under today's names (a run from before a rename is the same run)."""
    import warnings

    from dmlkit.methods import method_class

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return method_class(method).current_option_names(dict(options))


def run_raw_pixels(entry: Entry, seed: int, quick: bool) -> tuple[dict[str, float], float]:
    """L2-normalised pixels of the test split (the protocol's query set), Euclidean kNN."""
    import numpy as np
    import torch

    import dmlkit
    from dmlkit.engine.config import resolve_config
    from dmlkit.engine.run import prepare_data

    start = time.perf_counter()
    config = resolve_config({"method": "initial", "dataset": entry.dataset, **train_settings(entry, seed, quick)})
    if config.threads:  # as dmlkit.train does with the setting
        torch.set_num_threads(config.threads)
    query = prepare_data(config, "none").query
    pixels = torch.from_numpy(np.asarray(query.images, dtype=np.float32).reshape(len(query), -1) / 255.0)
    metrics = dmlkit.evaluate(torch.nn.functional.normalize(pixels, dim=1), query.true_labels,
                              recall_at=query.recall_at, seed=0)
    return metrics, time.perf_counter() - start


def run_training(entry: Entry, seed: int, quick: bool, runs_root: Path,
                 reuse: bool = False) -> tuple[dict[str, float], float, dict[str, Any]]:
    """One seed of ``entry`` through ``dmlkit.train``: its metrics, seconds and extras (epochs, the selected
    epoch, the evaluated epochs' history, images per second)."""
    import dmlkit

    out = runs_root / f"{entry.row}-{entry.protocol}-seed{seed}{'-quick' if quick else ''}"
    settings = train_settings(entry, seed, quick)
    if entry.init_from:
        weights = backbone_weights_of_run(ROOT / entry.init_from, runs_root / f"{entry.row}-init.pt")
        settings["options"] = {**settings.get("options", {}), "pretrained": str(weights)}
    done = finished_run(out, settings, entry.method, entry.dataset) if reuse else None
    if done is not None:
        print(f"{entry.row} seed {seed}: reusing the finished run in {out}")
    result = done if done is not None else dmlkit.train(entry.method, entry.dataset, str(out), overwrite=True,
                                                        **settings)
    extras = {"epochs": (result.get("config") or {}).get("epochs"), "best": result.get("best"),
              "history": [{k: h[k] for k in HISTORY_KEYS if k in h} for h in result.get("history", []) if "recall@1" in h]}
    if "images_per_second" in result:
        extras["images_per_second"] = round(float(result["images_per_second"]), 1)
    return reported_metrics(result), float(result["seconds"]), extras


def reported_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The test metrics of the epoch chosen on a validation split (MLRC) when the run had one, else the last."""
    best = result.get("best") or {}
    if str(best.get("selected_on", "")).startswith("validation"):
        return {k: v for k, v in best.items() if k not in ("epoch", "selected_on")}
    return dict(result["test"])


#: one seed: ``(metrics, seconds)`` or ``(metrics, seconds, extras)``
Runner = Callable[[Entry, int, bool], tuple]


def aggregate(entry: Entry, per_seed: Sequence[Mapping[str, Any]], quick: bool) -> dict[str, Any]:
    """One row from the per-seed results (``seed``, ``metrics``, ``seconds``, extras): each metric's mean and
    sample std (0 for one seed), the mean seconds, the seeds' own numbers under ``per_seed``."""
    shared = {"method": entry.row, "base_method": entry.method, "preset": entry.preset, "dataset": entry.dataset,
              "protocol": entry.label or entry.protocol, "quick": quick, "notes": entry.notes,
              "options": dict(entry.options) or None, "paper_value": entry.paper_value}
    (row,) = schema_rows({**shared, **seed} for seed in per_seed)
    return {**row, "fingerprint": fingerprint(entry)}


def earlier_seeds(suite: str, entry: Entry, quick: bool) -> list[dict[str, Any]]:
    """The per-seed results of this entry's saved row, if it was run with the same fingerprint."""
    for row in load_results(suite).get("rows", []):
        if ((row.get("method"), row.get("dataset"), row.get("protocol"), row.get("quick"))
                == (entry.row, entry.dataset, entry.label or entry.protocol, quick) and row.get("fingerprint") == fingerprint(entry)):
            return list(row.get("per_seed", []))
    return []


def run_entry(entry: Entry, quick: bool, seeds: Sequence[int] | None, runner: Runner,
              save: Callable[[dict[str, Any]], None] | None = None,
              earlier: Callable[[], Sequence[Mapping[str, Any]]] = tuple) -> dict[str, Any]:
    """Run ``entry`` for each seed; after each seed, ``save`` the row with the seeds ``earlier()`` holds then
    (read anew each time, so a process running other seeds of the row at once keeps them) and these."""
    wanted = list(seeds if seeds is not None else entry.seeds)
    mine: list[dict[str, Any]] = []
    row: dict[str, Any] = {}
    for seed in wanted:
        metrics, seconds, *extras = runner(entry, seed, quick)
        mine.append({"seed": seed, "metrics": {k: float(metrics[k]) for k in METRIC_KEYS if k in metrics},
                     "seconds": round(seconds, 2), **stamp(), **(extras[0] if extras else {})})
        kept = [dict(r) for r in earlier() if r["seed"] not in wanted]
        row = aggregate(entry, sorted(kept + mine, key=lambda r: r["seed"]), quick)
        if save is not None:
            save(row)
    return row


def run_suite(suite: Suite, *, quick: bool = False, seeds: Sequence[int] | None = None,
              only: Sequence[str] | None = None, runs_root: Path | None = None,
              runner: Runner | None = None, reuse: bool = False) -> list[dict[str, Any]]:
    """Run (the ``only`` rows of) ``suite`` and save each row as it finishes; returns the rows."""
    runs_root = runs_root or ROOT / "runs" / "benchmarks" / suite.name
    unknown = sorted(set(only or ()) - {e.row for e in suite.entries})
    if unknown:
        raise SystemExit(f"suite '{suite.name}' has no row(s) {', '.join(unknown)}; its rows: "
                         f"{', '.join(e.row for e in suite.entries)}")

    def default_runner(entry: Entry, seed: int, quick: bool) -> tuple:
        if entry.method == RAW_PIXELS:
            return run_raw_pixels(entry, seed, quick)
        return run_training(entry, seed, quick, runs_root, reuse)

    rows = []
    for entry in suite.entries:
        if only and entry.row not in only:
            continue
        row = run_entry(entry, quick, None if entry.method == RAW_PIXELS and seeds else seeds, runner or default_runner,
                        save=lambda r: save_rows(suite.name, [r], key=ROW_KEY),
                        earlier=partial(earlier_seeds, suite.name, entry, quick))
        rows.append(row)
    return rows


def summary(rows: Sequence[Mapping[str, Any]]) -> str:
    def cell(key: str) -> Callable[[Mapping], str]:
        def get(row: Mapping) -> str:
            mean, std = row["metrics"].get(key), row["metrics"].get(f"{key}_std")
            if mean is None:
                return "–"
            return f"{mean:.3f}" + (f" ± {std:.3f}" if len(row["seeds"]) > 1 else "")
        return get

    return markdown_table(rows, ["method", "protocol", ("R@1", cell("recall@1")), ("NMI", cell("nmi")),
                                 ("MAP@R", cell("map@r")), ("seconds", lambda r: f"{r['seconds']:.0f}"),
                                 ("seeds", lambda r: len(r["seeds"]))])


def main(argv: Sequence[str] | None = None) -> None:
    from suites import SUITES

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES))
    parser.add_argument("--list", action="store_true", help="list the suites and their rows")
    parser.add_argument("--quick", action="store_true", help="the reduced smoke version of every row")
    parser.add_argument("--seeds", type=int, nargs="+", help="override every row's seeds")
    parser.add_argument("--only", nargs="+", help="run only these rows")
    parser.add_argument("--reuse", action="store_true",
                        help="read a seed from its run directory when that run finished with the same configuration")
    args = parser.parse_args(argv)
    if args.list or not args.suite:
        for suite in SUITES.values():
            print(f"{suite.name}: {suite.description}\n  rows: {', '.join(e.row for e in suite.entries)}")
        return
    rows = run_suite(SUITES[args.suite], quick=args.quick, seeds=args.seeds, only=args.only, reuse=args.reuse)
    print(summary(rows))
