"""Pseudo-supervision quality over epochs (run setting ``quality_every``).

At epoch 0 (before training) and after every ``quality_every``-th epoch (and the last), the engine
embeds one fixed subset of the training split with the current model in eval mode, through the
method's :meth:`~dmlkit.methods.Method.quality_embed` (the representation its pseudo-supervision
reads: STML's teacher g, PLM's momentum encoder, SSDML's z; else the test embedding), and scores the
method's own :meth:`~dmlkit.methods.Method.quality_estimators` plus the k-means baseline on it with
:func:`dmlkit.evaluation.quality.quality_table` — the function ``dmlkit quality`` uses. The numbers go
into the epoch's history record as ``quality/<estimator>/<metric>``.

The subset: ``quality_items`` items drawn uniformly without replacement, once, with the run's seed
(uniform, not class-stratified: drawing it reads no label). Every estimator sees all of it as one batch
— as docs/glyphs_study.md scores finished runs (``--batch-size 2000``): random batches of a training
batch size hold about one item per class of a 100-class set, too few same-class pairs to score a
neighbourhood — and SSDML's propagation reads the run's own visible labels of those items (a
semi-supervised run's labeled fraction).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dmlkit.data.base import DMLDataset
from dmlkit.evaluation.embedding import embed_dataset
from dmlkit.evaluation.quality import TRIPLET_KEYS, quality_table
from dmlkit.methods.base import Method

PREFIX = "quality/"
#: row values recorded per estimator (those that apply to it)
METRICS = ("purity", "correlation", "pair_precision", "pair_recall", *TRIPLET_KEYS)
#: the values shown in the log line, first that applies
HEADLINE = ("purity", "pair_precision", "correct")


class QualityMonitor:
    """One fixed subset of the training split and the quality of a method's pseudo-supervision on it.

    Args:
        train: the run's training split (its ``true_labels`` are read here only, never by training).
        items: subset size (all items if the split is smaller).
        seed: the run's seed: the subset and k-means.
    """

    def __init__(self, train: DMLDataset, items: int, seed: int) -> None:
        n = len(train)
        rng = np.random.default_rng([seed, 22])  # its own stream of the run's seed
        self.indices = np.sort(rng.choice(n, min(items, n), replace=False))
        self.subset = train.subset(self.indices)
        self.seed = seed

    def measure(self, method: Method, device: torch.device | str = "cpu") -> dict[str, float]:
        """``{"quality/<estimator>/<metric>": value}`` of ``method`` as it is now (eval mode, no grad)."""
        embeddings = embed_dataset(method.quality_embed, self.subset, device, modules=(method,))
        rows = quality_table(embeddings, self.subset.true_labels, method.quality_estimators(),
                             batch_size=len(self.indices), baselines=("kmeans",), seed=self.seed,
                             visible_labels=np.asarray(self.subset.labels))
        return {f"{PREFIX}{row['method']}/{key}": float(row[key]) for row in rows for key in METRICS
                if row.get(key) is not None and math.isfinite(row[key])}


def quality_summary(record: dict) -> str:
    """One log line of a record's quality values: ``kmeans purity .812, stml-similarity pair_precision .431``."""
    values: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        if key.startswith(PREFIX):
            name, metric = key[len(PREFIX):].rsplit("/", 1)
            values.setdefault(name, {})[metric] = value
    parts = []
    for name, metrics in values.items():
        metric = next((m for m in HEADLINE if m in metrics), next(iter(metrics)))
        parts.append(f"{name} {metric} {metrics[metric]:.3f}")
    return ", ".join(parts)


def quality_keys(history: list[dict]) -> list[str]:
    """The ``quality/...`` keys recorded anywhere in ``history``, in first-seen order."""
    return list(dict.fromkeys(k for record in history for k in record if k.startswith(PREFIX)))
