"""Unsupervised baselines on Fashion-MNIST (issue 9): DeepCluster and instance discrimination, unsupervised
and zero-shot, in the row schema of ``benchmarks/stml.py`` so that the STML/PLM tables can include them.

Rows (method x protocol x seed):

- ``deepcluster``: ``dmlkit.train("deepcluster", "fashion-mnist", preset="deepcluster-fashion-mnist")``:
  k-means pseudo labels (100 clusters) re-clustered every epoch, normalized softmax.
- ``instance``: ``dmlkit.train("instance", ..., preset="instance-fashion-mnist")``: SimCLR NT-Xent on two
  views, in-batch negatives.
- ``instance-moco`` (only with ``--only instance-moco``): the same loss with a momentum encoder and a queue
  of 4,096 keys (preset ``instance-fashion-mnist-moco``).

Every preset uses STML's Fashion-MNIST network (``mnist-net`` + linear 128-d head), batch of 120 images
and 10 epochs. ``unsupervised`` trains on the 60,000 training images without labels and retrieves within
the 10,000 test images; ``zero-shot`` trains on classes 0-4 and tests on classes 5-9.

Usage (from the repository root)::

    python benchmarks/unsupervised_baselines.py                 # full: 10 epochs per row (about 15-25 min each on 2 CPU cores)
    python benchmarks/unsupervised_baselines.py --quick         # 1 epoch on a 3,000-image subset, 1,000 test images
    python benchmarks/unsupervised_baselines.py --only deepcluster --seeds 0 1 2

Each run replaces its own rows (method, dataset, protocol, seed) in
``benchmarks/results/unsupervised_baselines.json`` and prints a markdown table (mean ± std over seeds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load_results, markdown_table, save_rows

sys.path.insert(0, str(ROOT / "src"))

import dmlkit

BENCHMARK = "unsupervised_baselines"
DATASET = "fashion-mnist"
PROTOCOLS = {"unsupervised": "standard", "zero-shot": "zero-shot"}
#: row name -> (method, preset)
PRESETS = {
    "deepcluster": ("deepcluster", "deepcluster-fashion-mnist"),
    "instance": ("instance", "instance-fashion-mnist"),
    "instance-moco": ("instance", "instance-fashion-mnist-moco"),
}
DEFAULT_ROWS = ("deepcluster", "instance")
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r")
QUICK = {"epochs": 1, "train_subset": 3000, "test_subset": 1000}  # as benchmarks/stml.py
NOTES = {
    "deepcluster": "k-means (100 clusters) on the embedding every epoch, normalized softmax, classifier reset",
    "instance": "SimCLR NT-Xent (tau 0.5) on two views, in-batch negatives",
    "instance-moco": "NT-Xent (tau 0.2), momentum encoder (0.99) and a queue of 4,096 keys",
}


def run_row(name: str, protocol_name: str, seed: int, quick: bool, out_root: Path) -> dict:
    """Train one preset and return its result row (the schema of ``benchmarks/stml.py`` plus ``preset``)."""
    method, preset = PRESETS[name]
    settings = {"preset": preset, "protocol": PROTOCOLS[protocol_name], "seed": seed, "progress": False,
                "pictures": False}
    if quick:
        settings.update(QUICK)
    result = dmlkit.train(method, DATASET, str(out_root / f"{name}-{protocol_name}-seed{seed}"), overwrite=True, **settings)
    epochs = result["config"]["epochs"]
    row = {"method": name, "dataset": DATASET, "protocol": protocol_name,
           "metrics": {k: float(result["test"][k]) for k in METRICS if k in result["test"]},
           "seconds": round(float(result["seconds"]), 2), "seed": seed,
           "notes": f"preset {preset}, {epochs} epoch(s); {NOTES[name]}; labels never read",
           "preset": preset, "epochs": epochs, "images_per_second": round(float(result.get("images_per_second", 0.0)), 1),
           "best_epoch": result.get("best", {}).get("epoch")}
    if quick:
        row["quick"] = True
    return row


def summary(rows: list[dict]) -> str:
    """Markdown table, one line per (method, protocol, quick): mean ± std over the seeds present."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["protocol"], bool(r.get("quick"))), []).append(r)

    def cell(group: list[dict], key: str) -> str:
        values = np.array([r["metrics"].get(key, np.nan) for r in group], dtype=float)
        return f"{values.mean():.4f}" + (f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else "")

    table = [{"method": m + (" (quick)" if q else ""), "protocol": p, "seeds": len(g),
              **{key: cell(g, key) for key in ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r")},
              "seconds": f"{np.mean([r['seconds'] for r in g]):.0f}"}
             for (m, p, q), g in groups.items()]
    columns = ["method", "protocol", "seeds", ("R@1", "recall@1"), ("R@2", "recall@2"), ("R@4", "recall@4"),
               ("R@8", "recall@8"), ("NMI", "nmi"), ("MAP@R", "map@r"), "seconds"]
    return markdown_table(table, columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on a 3,000-image subset, 1,000 test images")
    parser.add_argument("--only", choices=tuple(PRESETS), action="append", help="run only this row (repeatable)")
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), action="append", help="only this protocol (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (default: 0)")
    parser.add_argument("--out", default="runs/benchmarks/unsupervised_baselines", help="where the run directories go")
    args = parser.parse_args(argv)
    out_root = Path(args.out) / ("quick" if args.quick else "full")
    rows = []
    for protocol_name in args.protocol or PROTOCOLS:
        for name in args.only or DEFAULT_ROWS:
            for seed in args.seeds:
                print(f"[{BENCHMARK}] {name} / {protocol_name} / seed {seed}{' (quick)' if args.quick else ''}", flush=True)
                try:
                    rows.append(run_row(name, protocol_name, seed, args.quick, out_root))
                except Exception as error:  # noqa: BLE001 - one failing row must not lose the others
                    print(f"[{BENCHMARK}] {name} / {protocol_name} / seed {seed} failed: {error!r}", flush=True)
                    continue
                save_rows(BENCHMARK, [rows[-1]])
    print(summary(rows or load_results(BENCHMARK)["rows"]))
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
