"""Batch samplers: iterables of ``list[int]`` (indices into one split) with ``__len__``.

Every sampler is deterministic given ``(seed, epoch)``: the engine builds a new one each epoch
(``method.batch_sampler(dataset, batch_size, seed, epoch)``), and the same pair always yields the
same batches. Randomness comes from a private ``torch.Generator``; the global RNG is never touched.

- :class:`RandomBatchSampler`: a random permutation cut into batches (drop last).
- :class:`MPerClassBatchSampler`: P classes x K samples per batch (supervised losses, DRML, MLRC).
- :class:`NeighbourGroupSampler`: STML / PLM nearest-neighbour batches from a neighbour table.
- :func:`class_balanced_batches` / :class:`ConcatenatedBatches`: SLADE's labeled + pseudo-class batches.
- :func:`make_partition`: SSDML partitions (all labeled + a random
  subset of the unlabeled items).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from dmlkit.data.seeding import seeded_generator

QUERY_DRAWS = ("permutation", "per_batch")


def _check_positive(name: str, value: int) -> None:
    if int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")


class RandomBatchSampler:
    """A random permutation of ``range(n)`` cut into ``⌊n / batch_size⌋`` batches (the rest is dropped).

    When ``n < batch_size`` one batch holding all ``n`` items (in random order) is yielded, so that
    tiny datasets still train.

    Args:
        n: number of items in the split.
        batch_size: items per batch.
        seed, epoch: the permutation is a function of both.
        drop_last: if False the last, smaller batch is yielded too.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, epoch: int = 0, drop_last: bool = True) -> None:
        _check_positive("n", n)
        _check_positive("batch_size", batch_size)
        self.n, self.batch_size, self.seed, self.epoch, self.drop_last = int(n), int(batch_size), seed, epoch, drop_last

    def __len__(self) -> int:
        if self.n < self.batch_size:
            return 1
        full, rest = divmod(self.n, self.batch_size)
        return full + int(rest > 0 and not self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=seeded_generator(self.seed, self.epoch))
        for b in range(len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


def _choose_without_replacement(counts: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """For each row r, ``k`` positions in ``range(counts[r])``: uniform without replacement when
    ``counts[r] >= k`` (Floyd's algorithm, vectorised over rows), with replacement otherwise.

    Returns long ``[R, k]``; memory is O(R k) whatever the class sizes.
    """
    rows = len(counts)
    chosen = torch.empty(rows, k, dtype=torch.long)
    for step in range(k):
        j = counts - k + step  # Floyd: j runs over n-k .. n-1
        t = (torch.rand(rows, generator=gen) * (j + 1).clamp(min=1)).long()
        taken = (chosen[:, :step] == t[:, None]).any(dim=1)
        chosen[:, step] = torch.where(taken, j, t)
    with_replacement = (torch.rand(rows, k, generator=gen) * counts[:, None]).long()
    return torch.where(counts[:, None] >= k, chosen, with_replacement)


class MPerClassBatchSampler:
    """Batches of ``classes_per_batch`` (P) distinct classes x ``samples_per_class`` (K) items each.

    Each batch draws P classes uniformly without replacement among the classes that have at least
    one labeled item; items with label -1 are never drawn. Within a class the K items are drawn
    without replacement. A class with fewer than K items is handled by ``small_classes``:
    ``"replace"`` (default) draws its K items with replacement (an item can then appear twice in a
    batch, as two augmented views of one image), ``"error"`` raises, ``"skip"`` never draws it.

    A batch lists its P groups one after the other: ``[c1 x K, c2 x K, ...]``.

    Args:
        labels: int ``[N]`` visible labels (-1 = unlabeled, ignored).
        classes_per_batch: P.
        samples_per_class: K.
        seed, epoch: the batches are a function of both.
        num_batches: batches per epoch; default ``⌊(number of labeled items) / (P K)⌋`` (at least 1).
        small_classes: ``"replace"`` | ``"error"`` | ``"skip"``.
    """

    def __init__(
        self,
        labels: np.ndarray | torch.Tensor | Sequence[int],
        classes_per_batch: int,
        samples_per_class: int,
        seed: int = 0,
        epoch: int = 0,
        num_batches: int | None = None,
        small_classes: str = "replace",
    ) -> None:
        _check_positive("classes_per_batch", classes_per_batch)
        _check_positive("samples_per_class", samples_per_class)
        if small_classes not in ("replace", "error", "skip"):
            raise ValueError(f"small_classes must be 'replace', 'error' or 'skip', got {small_classes!r}")
        labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.P, self.K = int(classes_per_batch), int(samples_per_class)
        self.seed, self.epoch = seed, epoch
        labeled = torch.nonzero(labels >= 0).flatten()
        classes, counts = torch.unique(labels[labeled], return_counts=True)
        small = counts < self.K
        if small.any() and small_classes == "error":
            worst = int(torch.argmin(counts))
            raise ValueError(
                f"{int(small.sum())} class(es) have fewer than samples_per_class={self.K} labeled items "
                f"(e.g. class {int(classes[worst])} has {int(counts[worst])}); lower samples_per_class or use "
                f"small_classes='replace' or 'skip'"
            )
        if small_classes == "skip":
            classes, counts = classes[~small], counts[~small]
        if len(classes) < self.P:
            raise ValueError(
                f"MPerClassBatchSampler needs classes_per_batch={self.P} distinct classes per batch but only "
                f"{len(classes)} class(es) have usable labeled items; lower classes_per_batch"
            )
        # items of each class, grouped: class c's items are members[offsets[c]:offsets[c]+counts[c]]
        order = torch.argsort(labels[labeled], stable=True)
        sorted_items = labeled[order]
        keep = torch.isin(labels[sorted_items], classes)
        self._members = sorted_items[keep]
        self._counts = counts
        self._offsets = torch.cumsum(counts, 0) - counts
        self.classes = classes
        n_labeled = int(counts.sum())
        self.num_batches = int(num_batches) if num_batches is not None else max(1, n_labeled // (self.P * self.K))
        _check_positive("num_batches", self.num_batches)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        gen = seeded_generator(self.seed, self.epoch)
        n_cls = len(self.classes)
        # P distinct classes per batch (uniform without replacement), then K items per picked class
        picks = _choose_without_replacement(torch.full((self.num_batches,), n_cls), self.P, gen).flatten()
        counts = self._counts[picks]  # [B*P]
        within = _choose_without_replacement(counts, self.K, gen)  # [B*P, K]
        items = self._members[self._offsets[picks][:, None] + within]  # [B*P, K]
        for batch in items.view(self.num_batches, self.P * self.K):
            yield batch.tolist()


class NeighbourGroupSampler:
    """Nearest-neighbour batches (STML Sec. 3.4, PLM Sec. 3.1.1).

    Row ``i`` of ``neighbours`` is ``i`` followed by its ``K - 1`` nearest neighbours. Each batch
    holds ``batch_size / K`` query groups; a group is the query followed by the other entries of
    its row (the query is moved to the front if the kNN put a duplicate first; if it is missing
    from its row, the last neighbour is dropped). Neighbours may repeat across groups. There are
    ``⌊N / batch_size⌋`` batches. How the queries are drawn (``queries``):

    - ``"per_batch"``: every batch draws its ``batch_size / K`` queries uniformly without replacement,
      independently of the other batches, so a query can recur within an epoch and others are never
      drawn (the official STML sampler, tjddus9597/STML-CVPR22 ``code/dataset/sampler.py`` L142-147:
      ``np.random.choice(num_samples, num_image, replace=False)`` per batch);
    - ``"permutation"``: the queries of the epoch are a random permutation of the split, so no query
      repeats within the epoch.

    Args:
        neighbours: long ``[N, K]`` neighbour table.
        batch_size: a multiple of K.
        seed, epoch: the queries are a function of both.
        queries: ``"permutation"`` (default) or ``"per_batch"``.
    """

    def __init__(self, neighbours: torch.Tensor | np.ndarray, batch_size: int, seed: int = 0, epoch: int = 0,
                 queries: str = "permutation") -> None:
        if queries not in QUERY_DRAWS:
            raise ValueError(f"queries must be one of {QUERY_DRAWS}, got '{queries}'")
        self.queries = queries
        table = torch.as_tensor(np.asarray(neighbours) if not isinstance(neighbours, torch.Tensor) else neighbours)
        if table.dim() != 2 or table.shape[1] < 1:
            raise ValueError(f"neighbours must be a [N, K] index table, got shape {tuple(table.shape)}")
        _check_positive("batch_size", batch_size)
        n, k = table.shape
        if batch_size % k:
            raise ValueError(
                f"batch_size={batch_size} is not a multiple of the group size K={k} (the neighbour table's "
                f"width); use a batch size such as {max(k, batch_size // k * k)} or {(batch_size // k + 1) * k}"
            )
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} is larger than the split ({n} items)")
        self.table = table.long().cpu()
        self.batch_size, self.K, self.seed, self.epoch = int(batch_size), int(k), seed, epoch
        self.groups_per_batch = self.batch_size // self.K

    def __len__(self) -> int:
        return len(self.table) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        n_batches, n = len(self), len(self.table)
        gen = seeded_generator(self.seed, self.epoch)
        if self.queries == "per_batch":  # distinct within a batch, independent across batches
            queries = torch.cat([torch.randperm(n, generator=gen)[: self.groups_per_batch] for _ in range(n_batches)])
        else:
            queries = torch.randperm(n, generator=gen)[: n_batches * self.groups_per_batch]
        rows = self.table[queries]  # [Q, K]
        # stable-sort each row so that entries equal to the query go last, then put the query first
        is_query = (rows == queries[:, None]).to(torch.int8)
        others = torch.gather(rows, 1, torch.sort(is_query, dim=1, stable=True).indices)[:, : self.K - 1]
        groups = torch.cat([queries[:, None], others], dim=1)
        for batch in groups.reshape(n_batches, self.batch_size):
            yield batch.tolist()


def make_partition(labels: np.ndarray | Sequence[int], n_unlabeled: int, seed: int | Sequence[int] = 0) -> np.ndarray:
    """One SSDML partition: every labeled item plus ``n_unlabeled`` random unlabeled ones (seed 002, Alg. 1).

    Args:
        labels: int ``[N]`` visible labels (-1 = unlabeled).
        n_unlabeled: unlabeled items to draw (all of them if fewer exist).
        seed: int or tuple of ints (e.g. ``(seed, partition_number)``).

    Returns:
        sorted int64 indices: the labeled items and the drawn unlabeled items.
    """
    labels = np.asarray(labels)
    if n_unlabeled < 0:
        raise ValueError(f"n_unlabeled must be >= 0, got {n_unlabeled}")
    labeled = np.flatnonzero(labels >= 0)
    unlabeled = np.flatnonzero(labels < 0)
    pick = torch.randperm(len(unlabeled), generator=seeded_generator(seed))[: int(n_unlabeled)].numpy()
    return np.sort(np.concatenate([labeled, unlabeled[pick]])).astype(np.int64)


def class_balanced_batches(
    labels: np.ndarray, batch: int, m: int, seed: int, epoch: int, num_batches: int | None = None
) -> MPerClassBatchSampler:
    """Batches of about ``batch`` items, ``m`` per class (labels >= 0), as many classes as fit (at least one;
    more than ``m`` each when there are too few classes): SLADE's labeled and pseudo-class batches."""
    classes = len(np.unique(labels[labels >= 0]))
    per_batch = max(1, min(batch // m, classes))
    return MPerClassBatchSampler(
        labels, per_batch, max(m, batch // per_batch), seed=seed, epoch=epoch, num_batches=num_batches
    )


class ConcatenatedBatches:
    """Batch i of ``first`` followed by batch i of ``second`` (SLADE: a labeled batch, then a pseudo-class
    batch); as long as ``first``."""

    def __init__(self, first: Iterable[list[int]], second: Iterable[list[int]]) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first)

    def __iter__(self) -> Iterator[list[int]]:
        for a, b in zip(self.first, self.second):
            yield list(a) + list(b)
