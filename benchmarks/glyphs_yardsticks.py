"""Yardsticks on the glyphs variants' test classes: raw pixels, and the initial (ImageNet) embedding
where this branch has one. Writes ``benchmarks/results/glyphs_yardsticks.json``.

    python benchmarks/glyphs_yardsticks.py [--variants glyphs glyphs-large] [--data-root PATH]

Raw pixels: the 64x64 grey test images flattened to 4,096 values in [0, 1], euclidean kNN (the
``pixels`` row). ``glyphs-large`` is evaluated on 20 instances per test class (a seeded draw, as
SOP-sized sets are: every query then has 19 relevant items). ``initial``: the default ImageNet backbone of ``initial`` runs, untrained, when
``dmlkit.models`` can build it with weights here (skipped with a note otherwise).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, save_rows

from dmlkit.data import load_records, make_split
from dmlkit.evaluation import evaluate

KEEP = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r")


PER_CLASS = {"glyphs-large": 20}


def per_class(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``n`` items per class (a seeded draw)."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n] for c in np.unique(labels)]))


def pixels_row(variant: str, root: str | None) -> dict:
    start = time.perf_counter()
    split = make_split(load_records(variant, root))
    test = split.query
    if variant in PER_CLASS:
        test = test.subset(per_class(test.true_labels, PER_CLASS[variant]))
    embeddings = torch.from_numpy(np.asarray(test.images, dtype=np.float32).reshape(len(test), -1) / 255.0)
    metrics = evaluate(embeddings, test.true_labels, recall_at=(1, 2, 4, 8), seed=0)
    n_classes = len(np.unique(test.true_labels))
    return {"method": "pixels", "dataset": variant, "protocol": "zero-shot", "seed": 0,
            "metrics": {k: round(float(metrics[k]), 4) for k in KEEP}, "seconds": round(time.perf_counter() - start, 1),
            "test_classes": n_classes, "test_images": len(test), "train_classes": split.info["n_train_classes"],
            "notes": f"raw 64x64 pixels, euclidean; {n_classes} unseen test classes"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["glyphs", "glyphs-large"])
    parser.add_argument("--data-root")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [pixels_row(variant, args.data_root) for variant in args.variants]
    save_rows("glyphs_yardsticks", rows)
    columns = [(k, lambda r, key=k: r["metrics"][key]) for k in KEEP]
    print(markdown_table(rows, ["method", "dataset", "test_classes", "test_images", *columns, "seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
