"""STML's training defaults against the official code (tjddus9597/STML-CVPR22; issue 25)."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from dmlkit.data.samplers import NeighbourGroupSampler
from dmlkit.methods.base import BuildInfo
from dmlkit.methods.stml import STML, Config
from dmlkit.targets.contextual import _ranking, contextual_similarity_parts

N, K, BATCH = 60, 3, 12  # 4 queries per batch, 5 batches per epoch


def _table(n: int = N, k: int = K) -> torch.Tensor:
    return torch.stack([(torch.arange(k) + i) % n for i in range(n)])  # row i = i, i+1, ..., i+k-1


def _queries(sampler: NeighbourGroupSampler) -> list[list[int]]:
    return [batch[::K] for batch in sampler]


# --- NN batches: queries with replacement across batches (code/dataset/sampler.py L142-147) -----------


def test_default_draws_each_batch_queries_anew_with_replacement_across_batches():
    assert Config().query_sampling == "per_batch"
    repeats, counts = 0, Counter()
    for epoch in range(40):
        per_batch = _queries(NeighbourGroupSampler(_table(), BATCH, seed=0, epoch=epoch, queries="per_batch"))
        assert len(per_batch) == N // BATCH
        assert all(len(set(q)) == len(q) for q in per_batch)  # distinct within a batch (replace=False)
        flat = [q for batch in per_batch for q in batch]
        repeats += len(flat) - len(set(flat))
        counts.update(flat)
    # 20 queries from 60 items, 4 per batch: P(no repeat in an epoch) = 0.03, so ~0 of 40 epochs repeat-free
    assert repeats > 40
    assert set(counts) == set(range(N))  # uniform over the split: every item is a query some time
    assert max(counts.values()) - min(counts.values()) < 30  # mean 13.3 per item


def test_permutation_is_the_named_alternative_without_repeats():
    for epoch in range(10):
        flat = [q for batch in _queries(NeighbourGroupSampler(_table(), BATCH, 0, epoch)) for q in batch]
        assert len(set(flat)) == len(flat) == 20
    with pytest.raises(ValueError, match="queries must be one of"):
        NeighbourGroupSampler(_table(), BATCH, queries="sometimes")


def test_groups_follow_the_table_and_are_reproducible_per_seed_and_epoch():
    sampler = NeighbourGroupSampler(_table(), BATCH, seed=1, epoch=2, queries="per_batch")
    for batch in sampler:
        for group in torch.tensor(batch).view(-1, K):
            assert group.tolist() == _table()[int(group[0])].tolist()
    assert list(sampler) == list(NeighbourGroupSampler(_table(), BATCH, seed=1, epoch=2, queries="per_batch"))
    assert list(sampler) != list(NeighbourGroupSampler(_table(), BATCH, seed=1, epoch=3, queries="per_batch"))


def test_stml_batch_sampler_uses_its_query_sampling():
    info = BuildInfo(channels=1, image_size=28, num_train=N, num_classes=0, dataset="toy", views_preset="grey28")
    for mode in ("per_batch", "permutation"):
        method = STML(Config(embedding_dim=8, g_dim=8, group_size=K, query_sampling=mode), info,
                      backbone_factory=lambda: _Tiny())
        method.neighbours = _table()
        assert method.batch_sampler(list(range(N)), BATCH, 0, 0).queries == mode
    with pytest.raises(ValueError, match="query_sampling must be one of"):
        Config(query_sampling="random")


class _Tiny(torch.nn.Module):
    out_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


# --- tie_break="torch_topk": what it guarantees ------------------------------------------------------


def test_torch_topk_puts_the_row_first_and_takes_the_largest_values():
    torch.manual_seed(0)
    scores = torch.randint(0, 3, (30, 30)).float()  # heavy ties everywhere
    scores.fill_diagonal_(2.0 + 1.0)  # the ranking matrix's unique row maximum
    for tie_break in ("torch_topk", "stable_index"):
        order = _ranking(scores, 7, tie_break)
        assert (order[:, 0] == torch.arange(30)).all()
        taken = torch.gather(scores, 1, order)
        assert (taken[:, :-1] >= taken[:, 1:]).all()  # non-increasing
        left = scores.scatter(1, order, float("-inf"))
        assert (left.max(dim=1).values <= taken.min(dim=1).values).all()  # nothing larger left out


def test_torch_topk_equals_stable_index_without_ties():
    torch.manual_seed(1)
    teacher = torch.randn(24, 6)
    indices = torch.arange(12).repeat(2)  # two views: ties only between a row and its other view
    a = contextual_similarity_parts(teacher, indices, k=6, tie_break="torch_topk")
    b = contextual_similarity_parts(teacher, indices, k=6, tie_break="stable_index")
    assert torch.equal(a.reciprocal, b.reciprocal) and torch.equal(a.expansion, b.expansion)
    assert torch.allclose(a.W, b.W)
