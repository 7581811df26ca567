"""How right is each method's pseudo-supervision (PLM's Table 2) on the training embeddings of finished runs?

Pseudo-supervision quality (PLM's Table 2) on the training embeddings of finished benchmark runs.

For each run directory given, the run's network embeds its training split (the items its method drew
pseudo labels from); ``MAX_ITEMS`` of them (seeded) are cut into batches of ``BATCH`` and every
estimator sees the same batches: k-means and agglomerative (Ward) pseudo labels with one cluster per
class present (the baselines a practitioner would use, and DeepCluster's targets), STML's contextualized
similarity (k = 10), PLM's piecewise-linear pieces (k = 10) and SSDML's propagated-affinity triplets
(k = 10, 5 revealed labels per class). Ground truth is read only here.

Columns: ``purity`` (label purity of the groups an estimator forms), ``correlation`` (Pearson correlation
of the estimated similarity with the same-class indicator over all pairs of a batch), pair precision and
recall at a similarity of 0.5.

    python experiments/quality.py runs/benchmarks/stml/full/stml-unsupervised [RUN ...] [--max-items 3000]

Rows go to ``experiments/results/quality.json``: ``method`` = the estimator, ``protocol`` =
``"<run method> <run protocol>"`` (whose embeddings), replacing rows with the same key.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np
import torch
from _common import EXPERIMENT_RESULTS_DIR, markdown_table, save_seed_rows

MAX_ITEMS, BATCH, SEED = 3000, 120, 0


def quality_rows(run_dir: Path, max_items: int = MAX_ITEMS, batch: int = BATCH, seed: int = SEED) -> list[dict]:
    from dmlkit.engine.quality import load_embeddings, pseudo_supervision_estimators
    from dmlkit.engine.run import resume_config
    from dmlkit.evaluation.quality import quality_table

    config = resume_config(run_dir)
    start = time.perf_counter()
    embeddings, labels, _ = load_embeddings(argparse.Namespace(source=str(run_dir), labels=None, split="train"))
    keep = np.sort(np.random.default_rng(seed).choice(len(embeddings), min(max_items, len(embeddings)), replace=False))
    table = quality_table(torch.as_tensor(embeddings[keep], dtype=torch.float32), labels[keep],
                          estimators=pseudo_supervision_estimators(), batch_size=batch, seed=seed)
    seconds = time.perf_counter() - start
    source = f"{config.method} {config.protocol}"
    return [{
        "method": r["method"], "dataset": config.dataset, "protocol": source, "seed": seed,
        "metrics": {k: r[k] for k in ("purity", "correlation", "pair_precision", "pair_recall", "positive_same_class",
                                      "negative_same_class", "correct") if r.get(k) is not None},
        "mean_group_size": r["mean_group_size"], "num_items": r["num_items"], "num_pairs": r["num_pairs"],
        "seconds": round(seconds, 1), "run": str(run_dir),
        "notes": f"training-split embeddings of the {source} run, {len(keep)} items in batches of {batch}",
    } for r in table]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--max-items", type=int, default=MAX_ITEMS)
    args = parser.parse_args(argv)
    rows = []
    for run_dir in args.runs:
        mine = quality_rows(run_dir, args.max_items)
        save_seed_rows("quality", mine, EXPERIMENT_RESULTS_DIR)
        rows += mine
    print(markdown_table(rows, ["protocol", "method"] + [
        (name, lambda r, k=key: r["metrics"].get(k, float("nan")))
        for name, key in (("purity", "purity"), ("correlation", "correlation"),
                          ("pair precision@0.5", "pair_precision"), ("pair recall@0.5", "pair_recall"))]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
