"""``dmlkit quality``: how good is each pseudo-supervision on the same embeddings (PLM Table 2).

Rows: k-means and agglomerative pseudo labels (the baselines), then each method's own estimate (STML's
contextualized similarity, PLM's piecewise-linear pieces: whatever a method's
``pseudo_supervision_estimators`` gives), all computed from the same embeddings on the same seeded batches.
For a run directory that kept pseudo labels as artifacts (SLADE's ``stage-pseudo-labels-round-<r>.pt``),
one more row per round: the labels the student actually trained on, against the truth, over the whole
unlabeled pool (every pair, from the contingency table).

``--over-epochs``: the trajectory a run recorded while training (run setting ``quality_every``,
:mod:`dmlkit.engine.quality_monitor`), one row per measured epoch, read from its metrics.json.
"""
from __future__ import annotations

import argparse
import json
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
    embeddings, labels, _, name = _load(args)
    return embeddings, labels, name


def _load(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """:func:`load_embeddings` plus the labels the run saw (−1 = unlabeled) when it is a semi-supervised
    run's training split, else None."""
    source = Path(args.source)
    if source.suffix == ".npy":
        labels_path = Path(args.labels) if args.labels else Path(str(source.with_suffix("")) + ".labels.npy")
        if not labels_path.is_file():
            raise FileNotFoundError(f"no labels for {source}: pass --labels FILE.npy (one integer per row)")
        return np.load(source, allow_pickle=False), np.load(labels_path, allow_pickle=False), None, source.name
    from dmlkit.engine.run import load_run, prepare_data
    from dmlkit.evaluation.embedding import embed_dataset
    from dmlkit.methods import method_class

    config, method, _ = load_run(source)
    data = prepare_data(config, method_class(config.method).uses_labels)
    dataset = data.train if args.split == "train" else data.query
    embeddings = embed_dataset(method.embed, dataset, modules=(method,)).numpy()
    seen = np.asarray(dataset.labels) if args.split == "train" else None
    partial = seen is not None and (seen >= 0).any() and (seen < 0).any()
    return embeddings, dataset.true_labels, seen if partial else None, f"{config.method} run {source} ({args.split} split)"


def run_quality(args: argparse.Namespace) -> str:
    from dmlkit.evaluation.quality import format_quality_table, quality_table

    embeddings, labels, visible, name = _load(args)
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    if len(embeddings) > args.max_items:
        keep = np.sort(np.random.default_rng(args.seed).choice(len(embeddings), args.max_items, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
        visible = None if visible is None else visible[keep]
    rows = quality_table(torch.as_tensor(embeddings, dtype=torch.float32), labels,
                         estimators=pseudo_supervision_estimators(), batch_size=args.batch_size, seed=args.seed,
                         visible_labels=visible, labels_per_class=args.labels_per_class)
    source = Path(args.source)
    if source.is_dir() and any(source.glob(STAGE_LABELS)):
        rows += stage_label_rows(source, _train_true_labels(source))
    seen = ("the run's own labels" if visible is not None
            else f"{args.labels_per_class} revealed labels per class")
    return (f"\nPseudo-supervision quality on {name}, {len(labels)} items, batches of {args.batch_size} "
            f"(triplets: partitions of at most 2,000 with {seen})\n" + format_quality_table(rows))


STAGE_LABELS = "stage-pseudo-labels-round-*.pt"


def _train_true_labels(run_dir: Path) -> np.ndarray:
    """Ground truth of the run's training split, in the order its pseudo labels are indexed."""
    from dmlkit.engine.resume import read_run_config
    from dmlkit.engine.run import prepare_data
    from dmlkit.methods import method_class

    config = read_run_config(run_dir)
    return np.asarray(prepare_data(config, method_class(config.method).uses_labels).train.true_labels)


def stage_label_rows(run_dir: Path, true_labels: np.ndarray) -> list[dict]:
    """One quality row per ``stage-pseudo-labels-round-<r>.pt`` in ``run_dir`` (round order): purity,
    φ correlation and pair precision/recall of its pseudo labels (``-1`` = labeled item, left out)
    against ``true_labels`` ``[N]``, over all pairs of the pool."""
    from dmlkit.evaluation.quality import group_purity_sums, partition_pair_stats
    from dmlkit.weights import safe_torch_load

    rows = []
    paths = sorted(run_dir.glob(STAGE_LABELS), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    for path in paths:
        stage = safe_torch_load(path)
        pseudo = np.asarray(torch.as_tensor(stage["pseudo_labels"]).cpu())
        if len(pseudo) != len(true_labels):
            raise ValueError(f"{path.name} holds {len(pseudo)} labels but the run's training split has "
                             f"{len(true_labels)} items")
        pool = pseudo >= 0
        truth, clusters = true_labels[pool], pseudo[pool]
        stats = partition_pair_stats(truth, clusters)
        numerator, denominator, total = group_purity_sums(truth, clusters)
        rows.append({
            "method": f"{path.stem} (whole pool)", "purity": numerator / denominator,
            "mean_group_size": total / len(np.unique(clusters)), "correlation": stats.correlation(),
            "pair_precision": stats.precision(), "pair_recall": stats.recall(), "threshold": 0.5,
            "num_pairs": int(stats.n), "num_items": int(pool.sum()),
        })
    return rows


def over_epochs_report(source: str | Path) -> str:
    """The ``quality/<estimator>/<metric>`` values of a run's metrics.json history as a table: one row
    per epoch that measured them (epoch 0 = before training), test R@1 beside them where evaluated."""
    from dmlkit.engine.quality_monitor import quality_keys

    run_dir = Path(source)
    path = run_dir / "metrics.json"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--over-epochs reads a run directory's metrics.json; {source} is not a directory")
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.json in {run_dir} (a run writes it when it finishes); pass a finished run")
    history = json.loads(path.read_text()).get("history") or []
    keys = quality_keys(history)
    if not keys:
        raise ValueError(f"{run_dir} did not record quality over epochs: train with --set quality_every=1 "
                         "(every N epochs: quality_every=N)")
    rows = [r for r in history if any(k in r for k in keys)]
    columns = keys + (["recall@1"] if any("recall@1" in r for r in rows) else [])
    head = ["epoch"] + [k[len("quality/"):].replace("/", " ") if k.startswith("quality/") else f"test {k}"
                        for k in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(r["epoch"])] + [f"{r[k]:.3f}" if k in r else "–" for k in columns]) + " |"
              for r in rows]
    return f"\nPseudo-supervision quality over epochs of {run_dir} (epoch 0: before training)\n" + "\n".join(lines)
