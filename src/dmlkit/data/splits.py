"""Protocols: from :class:`DatasetRecords` to the :class:`SplitData` the engine trains and evaluates on.

``make_split`` applies, in order (EVALUATION.md §6):

1. the protocol: ``standard`` (the dataset's own train/test tags: class-disjoint for CUB, Cars,
   SOP, In-shop and folders; shared classes for MNIST, Fashion-MNIST, CIFAR-10, digits) or
   ``zero-shot`` (train on the train images of the first ⌊C/2⌋ sorted classes, test on the test
   images of the rest; a no-op on data that is already class-disjoint);
2. MLRC ``fold=i``: the training classes are cut into ``n_folds`` contiguous blocks
   (:func:`mlrc_folds`); block i becomes ``val``, the others train;
3. SSDML ``val_fraction``: that fraction of each training class (rounded) is held out as ``val``,
   drawn with ``val_seed`` (fixed across label draws, as the SSDML protocol fixes its validation set);
4. ``labels_per_class=N``: N labels per class stay visible in the training split (drawn with
   ``seed`` among the items left after step 3), the others become -1.

The training split's labels are renumbered 0..C-1 over its classes (sorted original ids), so that
proxy/classifier heads can use ``num_classes``; ``info["train_classes"]`` maps them back. Evaluation
splits keep the dataset's class ids.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dmlkit.data.base import DatasetError, DatasetRecords, DMLDataset, SplitData
from dmlkit.data.images import ImageLoader, stored_size

PROTOCOLS = ("standard", "zero-shot")


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), salt]))


def _rank_within_class(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """For each item, its position within its class when the class is ordered by ``keys``."""
    order = np.lexsort((keys, labels))
    sorted_labels = labels[order]
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - np.searchsorted(sorted_labels, sorted_labels, side="left")
    return rank


def mlrc_folds(class_ids: np.ndarray | Sequence[int], n_folds: int = 4) -> list[np.ndarray]:
    """MLRC's class-disjoint folds: the sorted unique classes cut into ``n_folds`` contiguous blocks
    (CUB's 100 training classes → 1–25, 26–50, 51–75, 76–100)."""
    classes = np.unique(np.asarray(class_ids))
    classes = classes[classes >= 0]
    if n_folds < 2 or len(classes) < n_folds:
        raise ValueError(f"cannot cut {len(classes)} classes into {n_folds} folds; need 2 <= n_folds <= classes")
    return [block.astype(np.int64) for block in np.array_split(classes, n_folds)]


def stratified_indices(labels: np.ndarray | Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` items whose class proportions follow ``labels`` (largest-remainder
    quotas; every class keeps at least one item when ``n`` >= the number of classes). Unknown
    labels (-1) count as one more class."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    if n <= 0:
        raise ValueError(f"a subset needs n >= 1 items, got {n}")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.floor(exact).astype(np.int64)
    if n >= len(classes):
        quota = np.maximum(quota, 1)
    while quota.sum() > n:  # too many after the floor of 1: trim the most over-served classes
        excess = int(quota.sum() - n)
        over = np.argsort(-(quota - exact) + (quota <= 1) * 1e9, kind="stable")[:excess]
        quota[over[quota[over] > 1]] -= 1
    short = int(n - quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1  # largest remainders
    rank = _rank_within_class(inverse, _rng(seed, 4).random(len(labels)))
    return np.flatnonzero(rank < quota[inverse])


def stratified_subset(dataset: DMLDataset, n: int, seed: int = 0) -> DMLDataset:
    """A class-stratified random subset of ``n`` items (by ground truth), for quick runs."""
    if n >= len(dataset):
        return dataset
    return dataset.subset(stratified_indices(dataset.true_labels, n, seed), name=f"{dataset.name}[{n}]")


def _protocol_masks(records: DatasetRecords, protocol: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    tags, labels = records.splits, records.labels
    train = tags == "train"
    has_gallery = bool((tags == "gallery").any())
    query = (tags == "query") if has_gallery else np.isin(tags, ("test", "query"))
    gallery = (tags == "gallery") if has_gallery else None
    test_side = ~train
    disjoint = not np.intersect1d(labels[train & (labels >= 0)], labels[test_side]).size
    info = {"class_disjoint": disjoint}
    if protocol == "standard":
        return train, query, gallery, info
    if protocol != "zero-shot":
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if disjoint:
        info["zero_shot"] = "the standard split is already class-disjoint"
        return train, query, gallery, info
    classes = np.unique(labels[labels >= 0])
    first = np.isin(labels, classes[: len(classes) // 2])
    second = (labels >= 0) & ~first
    info.update(zero_shot=f"train classes {classes[: len(classes) // 2].tolist()}, "
                          f"test classes {classes[len(classes) // 2:].tolist()}", class_disjoint=True)
    return train & first, query & second, (gallery & second) if gallery is not None else None, info


def _draw_per_class(labels: np.ndarray, per_class: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask: ``per_class[c]`` random items of each class c (labels >= 0 only)."""
    known = labels >= 0
    rank = _rank_within_class(np.where(known, labels, -1), rng.random(len(labels)))
    return known & (rank < per_class[np.clip(labels, 0, None)])


def _class_name(records: DatasetRecords, c: int) -> str:
    if records.class_names is not None and 0 <= c < len(records.class_names):
        return f"class {c} ({records.class_names[c]})"
    return f"class {c}"


def _hold_out_val(labels: np.ndarray, train_idx: np.ndarray, fold: int | None, n_folds: int, val_fraction: float,
                  val_seed: int, info: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``: the MLRC ``fold``'s classes, or ``val_fraction`` of each training class, held out
    of the training items as ``val`` (neither: no ``val``)."""
    if fold is not None:
        folds = mlrc_folds(labels[train_idx], n_folds)
        if not 0 <= fold < n_folds:
            raise ValueError(f"fold must be in 0..{n_folds - 1}, got {fold}")
        held = np.isin(labels[train_idx], folds[fold])
        info["fold_classes"] = [int(folds[fold][0]), int(folds[fold][-1])]
        return train_idx[~held], train_idx[held]
    if val_fraction > 0:
        train_labels = labels[train_idx]
        counts = np.bincount(train_labels[train_labels >= 0], minlength=int(labels.max()) + 1)
        held = _draw_per_class(train_labels, np.rint(counts * val_fraction).astype(np.int64), _rng(val_seed, 1))
        return train_idx[~held], train_idx[held]
    return train_idx, np.empty(0, dtype=np.int64)


def _visible_labels(records: DatasetRecords, train_idx: np.ndarray, labels_per_class: int | None,
                    seed: int) -> np.ndarray:
    """The training labels a method may read: -1 where the dataset marks an item unlabeled, and, with
    ``labels_per_class``, all but that many seeded draws of each class hidden too."""
    labels = records.labels
    visible = labels[train_idx].copy()
    if records.labeled is not None:
        visible[~records.labeled[train_idx]] = -1
    if labels_per_class is None:
        return visible
    n = int(labels_per_class)
    counts = np.bincount(visible[visible >= 0], minlength=int(labels.max()) + 1)
    present = np.flatnonzero(counts)
    too_few = present[counts[present] < n]
    if len(too_few):
        c = int(too_few[0])
        raise DatasetError(
            f"{records.name}: labels_per_class={n} but {_class_name(records, c)} has only {counts[c]} "
            f"labeled training images ({len(too_few)} class(es) too small); lower labels_per_class"
        )
    keep = _draw_per_class(visible, np.full(len(counts), n), _rng(seed, 2))
    visible[~keep] = -1
    return visible


def _dataset(records: DatasetRecords, idx: np.ndarray, tag: str, shown: np.ndarray, true: np.ndarray,
             class_names) -> DMLDataset:
    """The items ``idx`` of ``records`` as a dataset named ``<name>/<tag>`` with the given visible and true labels."""
    loader = None if records.in_memory else ImageLoader(stored_size(records.image_size), records.channels)
    images = records.images[idx] if records.in_memory else [records.images[i] for i in idx]
    return DMLDataset(images, shown, true, loader, f"{records.name}/{tag}", records.recall_at,
                      records.channels, records.image_size, class_names, records.augmentations)


def _check_split_arguments(labels_per_class: int | None, fold: int | None, val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if fold is not None and val_fraction > 0:
        raise ValueError("use either fold (MLRC validation fold) or val_fraction (SSDML), not both")
    if labels_per_class is not None and int(labels_per_class) < 1:
        raise ValueError(f"labels_per_class must be a positive integer, got {labels_per_class}")


def _train_dataset(records: DatasetRecords, train_idx: np.ndarray, visible: np.ndarray) -> tuple[DMLDataset, np.ndarray]:
    """The training dataset with its classes renumbered 0..C-1 (sorted original ids; -1 stays -1), and
    those original ids."""
    labels = records.labels
    true_train = labels[train_idx]
    train_classes = np.unique(true_train[true_train >= 0])
    remap = np.full(int(labels.max()) + 2, -1, dtype=np.int64)
    remap[train_classes] = np.arange(len(train_classes))
    names = records.class_names
    train_names = [names[c] for c in train_classes] if names is not None and len(names) > labels.max() else None
    return _dataset(records, train_idx, "train", remap[visible], remap[true_train], train_names), train_classes


def _lone_queries(labels: np.ndarray, query_idx: np.ndarray, gallery_idx: np.ndarray | None) -> int:
    """Queries with no relevant item to retrieve: alone in their class (in the query set, or absent from the gallery)."""
    q_labels = labels[query_idx]
    if gallery_idx is None:
        _, q_counts = np.unique(q_labels, return_counts=True)
        return int((q_counts == 1).sum())
    return int((~np.isin(q_labels, labels[gallery_idx])).sum())


def make_split(
    records: DatasetRecords,
    protocol: str = "standard",
    labels_per_class: int | None = None,
    seed: int = 0,
    fold: int | None = None,
    val_fraction: float = 0.0,
    n_folds: int = 4,
    val_seed: int = 0,
) -> SplitData:
    """Apply a protocol (see the module docstring) and build the train / query / gallery / val sets.

    Args:
        records: a dataset from :func:`dmlkit.data.load_records`.
        protocol: ``standard`` | ``zero-shot``.
        labels_per_class: keep this many visible labels per training class (None: all).
        seed: seed of the label draw.
        fold: MLRC fold held out as ``val`` (0..n_folds-1); None for no fold.
        val_fraction: fraction of each training class held out as ``val`` (SSDML: 0.15).
        n_folds: MLRC folds (4).
        val_seed: seed of the ``val_fraction`` draw.

    Raises:
        DatasetError: a class has fewer than ``labels_per_class`` items, or a split is empty.
        ValueError: bad arguments (unknown protocol, fold out of range, fold with val_fraction).
    """
    _check_split_arguments(labels_per_class, fold, val_fraction)
    labels = records.labels
    train_mask, query_mask, gallery_mask, info = _protocol_masks(records, protocol)
    train_idx, val_idx = _hold_out_val(labels, np.flatnonzero(train_mask), fold, n_folds, val_fraction, val_seed, info)
    visible = _visible_labels(records, train_idx, labels_per_class, seed)
    query_idx = np.flatnonzero(query_mask)
    gallery_idx = np.flatnonzero(gallery_mask) if gallery_mask is not None else None
    for tag, idx in (("train", train_idx), ("test", query_idx), ("gallery", gallery_idx)):
        if idx is not None and len(idx) == 0:
            raise DatasetError(f"{records.name}: the {tag} split is empty under protocol {protocol!r}")

    train, train_classes = _train_dataset(records, train_idx, visible)
    names = records.class_names
    query = _dataset(records, query_idx, "query" if gallery_idx is not None else "test", labels[query_idx],
                     labels[query_idx], names)
    gallery = (_dataset(records, gallery_idx, "gallery", labels[gallery_idx], labels[gallery_idx], names)
               if gallery_idx is not None else None)
    val = _dataset(records, val_idx, "val", labels[val_idx], labels[val_idx], names) if len(val_idx) else None

    q_labels = labels[query_idx]
    info.update(
        protocol=protocol, seed=seed, labels_per_class=labels_per_class, fold=fold, n_folds=n_folds if fold is not None else None,
        val_fraction=val_fraction, val_seed=val_seed if val_fraction > 0 else None,
        n_train=len(train_idx), n_labeled=int((visible >= 0).sum()), n_unlabeled=int((visible < 0).sum()),
        n_val=len(val_idx), n_query=len(query_idx), n_gallery=len(gallery_idx) if gallery_idx is not None else 0,
        n_train_classes=len(train_classes), n_test_classes=len(np.unique(q_labels)),
        n_labeled_classes=len(np.unique(visible[visible >= 0])),
        lone_queries=_lone_queries(labels, query_idx, gallery_idx),
        train_classes=train_classes.tolist(),
    )
    return SplitData(train=train, query=query, gallery=gallery, val=val, info=info)
