"""DRML on Fashion-MNIST, zero-shot: base loss X against DRML-X for X in Triplet, ProxyAnchor, CosFace.

Every row trains on classes 0-4 of the training split and retrieves among classes 5-9 of the test split
(``protocol="zero-shot"``), from scratch, with the same backbone (``mnist-net``), embedding size (128:
a linear head for X, 4 branches x 32-d nodes for DRML-X), batches (5 classes x 20), optimiser (AdamW,
lr 1e-3, weight decay 1e-4, proxies at x10), schedule (cosine) and number of epochs.

Rows (one per seed; the table reports mean ± std over seeds):

- ``triplet`` / ``proxyanchor`` / ``cosface``: ``dmlkit.train("supervised", ...)`` with the loss by its
  pytorch-metric-learning name (``TripletMarginLoss``, ``ProxyAnchorLoss``, ``CosFaceLoss``).
- ``drml-triplet`` / ``drml-proxyanchor`` / ``drml-cosface``: ``dmlkit.train("drml", preset="drml-fashion-mnist")``
  with ``base_loss`` = ``triplet`` (hard miner, margin 1), ``proxy_anchor`` (δ 0.2, α 64), ``cosface``.

Usage (from the repository root)::

    python benchmarks/drml.py                      # full: 6 rows x 3 seeds x 10 epochs (hours on 2 CPU cores)
    python benchmarks/drml.py --quick              # 1 epoch on a 2,000-image subset, 1,000 test images, seed 0
    python benchmarks/drml.py --only drml-cosface --seeds 0 1

Each run replaces its own rows (same method, dataset, protocol, seed) in ``benchmarks/results/drml.json``
(``--results NAME``: ``NAME.json``) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np
from _common import save_rows

import dmlkit

DATASET = "fashion-mnist"
PROTOCOL = "zero-shot"
PRESET = "drml-fashion-mnist"
SEEDS = (0, 1, 2)
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r")
#: one schedule for every row (the DRML preset holds the same values)
SHARED = {"protocol": PROTOCOL, "epochs": 10, "batch_size": 100, "lr": 1e-3, "weight_decay": 1e-4,
          "optimizer": "adamw", "scheduler": "cosine", "progress": False, "pictures": False}
QUICK = {"epochs": 1, "train_subset": 2000, "test_subset": 1000}
BASELINE_OPTIONS = {"backbone": "mnist-net", "embedding_dim": 128, "samples_per_class": 20, "proxy_lr_multiplier": 10.0}
#: row name -> (method, options)
ROWS: dict[str, tuple[str, dict]] = {
    "triplet": ("supervised", {"loss": "TripletMarginLoss", **BASELINE_OPTIONS}),
    "drml-triplet": ("drml", {"base_loss": "triplet"}),
    "proxyanchor": ("supervised", {"loss": "ProxyAnchorLoss", **BASELINE_OPTIONS}),
    "drml-proxyanchor": ("drml", {"base_loss": "proxy_anchor"}),
    "cosface": ("supervised", {"loss": "CosFaceLoss", **BASELINE_OPTIONS}),
    "drml-cosface": ("drml", {"base_loss": "cosface"}),
}
PAPER_NOTE = ("no paper number for Fashion-MNIST; the seed's MLRC tables (CUB, Cars) show DRML-X >= X by "
              "0-3 points P@1 (DRML-Triplet on CUB concatenated: -0.2)")




def settings_for(name: str, seed: int, quick: bool) -> tuple[str, dict]:
    method, options = ROWS[name]
    settings = {**SHARED, "seed": seed, "options": dict(options)}
    if method == "drml":
        settings["preset"] = PRESET
    if quick:
        settings.update(QUICK)
    return method, settings


def run_row(name: str, seed: int, quick: bool, out_root: Path) -> dict:
    method, settings = settings_for(name, seed, quick)
    result = dmlkit.train(method, DATASET, str(out_root / f"{name}-seed{seed}"), overwrite=True, **settings)
    config = result.get("config", {})
    row = {
        "method": name, "dataset": DATASET, "protocol": PROTOCOL,
        "metrics": {k: float(result["test"][k]) for k in METRICS if k in result["test"]},
        "seconds": round(float(result["seconds"]), 2), "seed": seed,
        "notes": f"{method} {json.dumps(config.get('options', settings['options']), sort_keys=True)}; "
                 f"{settings['epochs']} epoch(s); {PAPER_NOTE}",
        "base_method": method, "epochs": settings["epochs"],
    }
    if "images_per_second" in result:
        row["images_per_second"] = round(float(result["images_per_second"]), 1)
    if quick:
        row["quick"] = True
    return row


def save(rows: list[dict], results: str = "drml") -> dict:
    """Replace the rows with the same (method, dataset, protocol, seed) in ``results/<results>.json``."""
    return save_rows(results, rows)


def table(rows: list[dict]) -> str:
    """Mean ± std over seeds of every metric, one line per row name (in ROWS order)."""
    head = "| method | seeds | " + " | ".join(METRICS) + " | seconds |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in ROWS:
        mine = [r for r in rows if r["method"] == name]
        if not mine:
            continue
        cells = []
        for key in METRICS:
            values = np.array([r["metrics"].get(key, np.nan) for r in mine], dtype=float)
            cells.append(f"{values.mean():.4f} ± {values.std():.4f}" if len(values) > 1 else f"{values[0]:.4f}")
        quick = " (quick)" if any(r.get("quick") for r in mine) else ""
        seconds = np.mean([r["seconds"] for r in mine])
        lines.append(f"| {name}{quick} | {len(mine)} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch, 2,000 training / 1,000 test images, seed 0")
    parser.add_argument("--only", choices=tuple(ROWS), action="append", help="run only this row (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--out", default="runs/benchmarks/drml", help="where the run directories go")
    parser.add_argument("--results", default="drml", help="results file stem under benchmarks/results (default drml)")
    args = parser.parse_args(argv)
    seeds = args.seeds or ((0,) if args.quick else SEEDS)
    out_root = Path(args.out) / ("quick" if args.quick else "full")
    rows, failed = [], []
    for name in args.only or ROWS:
        for seed in seeds:
            print(f"[drml benchmark] {name} seed {seed}{' (quick)' if args.quick else ''}", flush=True)
            try:
                rows.append(run_row(name, seed, args.quick, out_root))
            except Exception as error:  # noqa: BLE001 - one broken row must not lose the others; reported below
                failed.append(f"{name} seed {seed}: {type(error).__name__}: {error}")
                print(f"[drml benchmark] FAILED {failed[-1]}", flush=True)
                continue
            save([rows[-1]], args.results)
    print(table(rows))
    for line in failed:
        print(f"FAILED {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
