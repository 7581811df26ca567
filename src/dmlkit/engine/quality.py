"""``dmlkit quality``: how good is each pseudo-supervision on the same embeddings (PLM Table 2).

Rows: k-means and agglomerative pseudo labels (the baselines), then each method's own estimate (STML's
contextualized similarity, PLM's piecewise-linear pieces: whatever a method's
``pseudo_supervision_estimators`` gives), all computed from the same embeddings on the same seeded batches.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def pseudo_supervision_estimators(k: int = 10) -> dict:
    """name -> ``callable(embeddings [b, D]) -> similarity or pseudo-label estimate``: what every registered
    method answers to :meth:`dmlkit.methods.Method.pseudo_supervision_estimators` (neighbourhood size k)."""
    from dmlkit.methods import REGISTRY, method_class

    estimators: dict = {}
    for name in REGISTRY:
        try:
            cls = method_class(name)
        except KeyError:  # a method not implemented in this version
            continue
        estimators.update(cls.pseudo_supervision_estimators(k))
    return estimators


def load_embeddings(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """Embeddings and ground-truth labels from a run directory or an ``.npy`` file."""
    source = Path(args.source)
    if source.suffix == ".npy":
        labels_path = Path(args.labels) if args.labels else Path(str(source.with_suffix("")) + ".labels.npy")
        if not labels_path.is_file():
            raise FileNotFoundError(f"no labels for {source}: pass --labels FILE.npy (one integer per row)")
        return np.load(source, allow_pickle=False), np.load(labels_path, allow_pickle=False), source.name
    from dmlkit.engine.run import load_run, prepare_data
    from dmlkit.evaluation.embedding import embed_dataset
    from dmlkit.methods import method_class

    config, method, _ = load_run(source)
    data = prepare_data(config, method_class(config.method).uses_labels)
    dataset = data.train if args.split == "train" else data.query
    embeddings = embed_dataset(method.embed, dataset, modules=(method,)).numpy()
    return embeddings, dataset.true_labels, f"{config.method} run {source} ({args.split} split)"


def run_quality(args: argparse.Namespace) -> str:
    from dmlkit.evaluation.quality import format_quality_table, quality_table

    embeddings, labels, name = load_embeddings(args)
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    if len(embeddings) > args.max_items:
        keep = np.sort(np.random.default_rng(args.seed).choice(len(embeddings), args.max_items, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    rows = quality_table(torch.as_tensor(embeddings, dtype=torch.float32), labels,
                         estimators=pseudo_supervision_estimators(), batch_size=args.batch_size, seed=args.seed)
    return f"\nPseudo-supervision quality on {name}, {len(labels)} items, batches of {args.batch_size}\n" \
           + format_quality_table(rows)
