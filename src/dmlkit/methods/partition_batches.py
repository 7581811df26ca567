"""The mini-batches of the deep classical baselines over their current partition (seed 002 Algorithm 1;
spec SSDML.md §8 open choice): graph groups of partition nodes plus a few labeled items per class."""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from dmlkit.data.seeding import seeded_generator

if TYPE_CHECKING:
    from dmlkit.methods.classical import ClassicalConfig, _StochasticBaseline


class PartitionBatches:
    """Batches of one epoch over the current partition (spec §8 open choice): ``groups`` random
    partition nodes, each followed by its ``group_size − 1`` nearest graph neighbours, plus
    ``labeled_per_class`` labeled nodes from each of ``labeled_per_batch / labeled_per_class``
    random classes; duplicates dropped. ``⌊n_partition / batch_size⌋`` batches per epoch.
    The partition is read when iteration starts (after the engine's ``refresh``)."""

    def __init__(self, method: _StochasticBaseline, labels: np.ndarray, batch_size: int, seed: int, epoch: int) -> None:
        c = method.config
        self.method, self.seed, self.epoch = method, seed, epoch
        self.groups = (batch_size - c.labeled_per_batch) // c.group_size
        if self.groups < 1:
            raise ValueError(f"{method.name}: batch_size {batch_size} leaves no room for a group of {c.group_size} "
                             f"after {c.labeled_per_batch} labeled items; raise batch_size or lower labeled_per_batch")
        n_labeled = int((labels >= 0).sum())
        n_partition = n_labeled + min(unlabeled_per_partition(c, labels), len(labels) - n_labeled)
        self.num_batches = max(1, n_partition // batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        m, c = self.method, self.method.config
        if m._partition_id is None:
            raise RuntimeError(f"{m.name}: the batch sampler needs refresh() to have built the partition first")
        gen = seeded_generator(self.seed, self.epoch, 8191)
        n, count = len(m._nodes), self.num_batches * self.groups
        seeds = (torch.randperm(n, generator=gen)[:count] if count <= n else torch.randint(n, (count,), generator=gen))
        members = seeds[:, None]
        if c.group_size > 1:
            if m._neighbours is None or m._neighbours.shape[1] < c.group_size - 1:
                raise ValueError(f"{m.name}: group_size {c.group_size} needs a graph with >= {c.group_size - 1} "
                                 "neighbours; lower group_size (1 = no graph) or raise k")
            members = torch.cat([members, m._neighbours[seeds, : c.group_size - 1]], dim=1)
        members = members.view(self.num_batches, -1)
        labeled = self._labeled_picks(gen)
        for b in range(self.num_batches):
            local = torch.cat([members[b], labeled[b]]).numpy()
            _, first = np.unique(local, return_index=True)
            yield m._nodes[local[np.sort(first)]].tolist()

    def _labeled_picks(self, gen: torch.Generator) -> list[Tensor]:
        """Per batch: ``labeled_per_class`` random labeled nodes of each of some random classes."""
        m, c = self.method, self.method.config
        labels = m._node_labels
        labeled = (labels >= 0).nonzero().squeeze(1)
        if c.labeled_per_batch == 0 or len(labeled) == 0:
            return [torch.zeros(0, dtype=torch.long)] * self.num_batches
        classes, cls = torch.unique(labels[labeled], return_inverse=True)
        n_classes = max(1, min(len(classes), c.labeled_per_batch // c.labeled_per_class))
        chosen_rank = torch.argsort(torch.rand(self.num_batches, len(classes), generator=gen), dim=1).argsort(dim=1)
        key = cls[None, :] + torch.rand(self.num_batches, len(labeled), generator=gen)  # class, then random
        order = torch.argsort(key, dim=1)
        starts = torch.searchsorted(cls.sort().values, torch.arange(len(classes)))
        rank_in_class = torch.empty_like(order)
        rank_in_class.scatter_(1, order, torch.arange(len(labeled)).expand_as(order) - starts[cls[order]])
        keep = (rank_in_class < c.labeled_per_class) & (chosen_rank[:, cls] < n_classes)
        return [labeled[keep[b]] for b in range(self.num_batches)]


def unlabeled_per_partition(config: ClassicalConfig, labels: np.ndarray) -> int:
    """Unlabeled items per partition; ``n_unlabeled_partition = 0`` takes them all (FGVC: no partition)."""
    return config.n_unlabeled_partition if config.n_unlabeled_partition > 0 else len(labels)
