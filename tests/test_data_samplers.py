"""Samplers: sizes, group structure, P x K structure, determinism, bad input."""
import numpy as np
import pytest
import torch

from dmlkit.data.samplers import (
    MPerClassBatchSampler,
    NeighbourGroupSampler,
    RandomBatchSampler,
    make_partition,
)


def test_random_batch_sampler_is_a_seeded_permutation():
    s = RandomBatchSampler(10, 3, seed=1, epoch=2)
    batches = list(s)
    assert len(s) == len(batches) == 3 and all(len(b) == 3 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))
    assert batches == list(RandomBatchSampler(10, 3, seed=1, epoch=2))
    assert batches != list(RandomBatchSampler(10, 3, seed=1, epoch=3))
    assert sorted(i for b in RandomBatchSampler(10, 3, drop_last=False) for i in b) == list(range(10))
    assert len(RandomBatchSampler(10, 3, drop_last=False)) == 4
    assert len(RandomBatchSampler(2, 8)) == 1 and sorted(next(iter(RandomBatchSampler(2, 8)))) == [0, 1]


def _labels():
    # class sizes 6, 6, 6, 2, 5; three unlabeled items
    labels = np.repeat(np.arange(5), [6, 6, 6, 2, 5])
    return np.concatenate([labels, [-1, -1, -1]])


def test_mperclass_structure_and_determinism():
    labels = _labels()
    s = MPerClassBatchSampler(labels, classes_per_batch=3, samples_per_class=4, seed=0, epoch=0, num_batches=50)
    batches = list(s)
    assert len(s) == len(batches) == 50
    for batch in batches:
        assert len(batch) == 12
        groups = np.asarray(labels)[np.asarray(batch)].reshape(3, 4)
        assert (groups >= 0).all(), "unlabeled items must never be drawn"
        assert (groups == groups[:, :1]).all(), "each group is one class"
        assert len(set(groups[:, 0])) == 3, "P distinct classes"
        for g, items in zip(groups[:, 0], np.asarray(batch).reshape(3, 4)):
            if g != 3:  # classes with >= K items: no repeats
                assert len(set(items)) == 4
    # every class is drawn, each uniformly often-ish
    seen = np.bincount(np.asarray(labels)[np.concatenate(batches)], minlength=5) / 4
    assert seen.min() > 15
    assert batches == list(MPerClassBatchSampler(labels, 3, 4, seed=0, epoch=0, num_batches=50))
    assert batches != list(MPerClassBatchSampler(labels, 3, 4, seed=0, epoch=1, num_batches=50))
    # default length: labeled items // (P K)
    assert len(MPerClassBatchSampler(labels, 2, 2)) == 25 // 4


def test_mperclass_without_replacement_is_uniform():
    labels = np.zeros(5, dtype=int)
    s = MPerClassBatchSampler(labels, 1, 2, num_batches=5000)
    counts = np.bincount(np.concatenate(list(s)), minlength=5)
    assert counts.sum() == 10000
    np.testing.assert_allclose(counts / 10000, 0.2, atol=0.02)


def test_mperclass_small_classes_modes_and_errors():
    labels = _labels()
    with pytest.raises(ValueError, match="class 3 has 2"):
        MPerClassBatchSampler(labels, 2, 4, small_classes="error")
    skip = MPerClassBatchSampler(labels, 2, 4, small_classes="skip", num_batches=30)
    assert 3 not in set(np.asarray(labels)[np.concatenate(list(skip))])
    with pytest.raises(ValueError, match="classes_per_batch=6 distinct classes.*only 5"):
        MPerClassBatchSampler(labels, 6, 2)


def _table(n=12, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    rest = torch.stack([torch.randperm(n, generator=g)[: k - 1] for _ in range(n)])
    return torch.cat([torch.arange(n)[:, None], rest], dim=1)


def test_neighbour_groups_follow_the_table():
    table = _table()
    s = NeighbourGroupSampler(table, batch_size=6, seed=3, epoch=1)
    batches = list(s)
    assert len(s) == len(batches) == 2
    for batch in batches:
        groups = torch.tensor(batch).view(2, 3)
        queries = groups[:, 0]
        assert len(set(queries.tolist())) == 2, "queries drawn without replacement"
        for group in groups:
            q = int(group[0])
            assert group.tolist() == table[q].tolist()
    assert batches == list(NeighbourGroupSampler(table, 6, seed=3, epoch=1))
    assert batches != list(NeighbourGroupSampler(table, 6, seed=3, epoch=2))
    changed = table.clone()
    changed[:, 1:] = (changed[:, 1:] + 1) % 12
    assert list(NeighbourGroupSampler(changed, 6, seed=3, epoch=1)) != batches


def test_neighbour_group_puts_the_query_first():
    table = torch.tensor([[1, 0, 2], [1, 0, 2], [2, 1, 0]])  # row 0's own index is second (a duplicate)
    s = NeighbourGroupSampler(table, 3, seed=0)
    groups = [torch.tensor(b).view(-1, 3) for b in s]
    for g in torch.cat(groups):
        assert int(g[0]) in (0, 1, 2) and sorted(g.tolist()) == sorted(table[int(g[0])].tolist())
    row0 = [0, 1, 2]
    assert any(g.tolist() == row0 for g in torch.cat([torch.tensor(b).view(-1, 3) for e in range(20)
                                                        for b in NeighbourGroupSampler(table, 3, 0, e)]))


def test_neighbour_batch_not_multiple_of_k_is_an_error():
    with pytest.raises(ValueError, match="batch_size=7 is not a multiple of the group size K=3"):
        NeighbourGroupSampler(_table(), 7)


def test_partition_holds_all_labeled_and_a_seeded_unlabeled_subset():
    labels = np.array([0, -1, 1, -1, -1, 2, -1, -1, -1, -1])
    p = make_partition(labels, 3, seed=0)
    assert {0, 2, 5} <= set(p.tolist()) and len(p) == 6
    assert (labels[p] < 0).sum() == 3
    np.testing.assert_array_equal(p, make_partition(labels, 3, seed=0))
    assert any(not np.array_equal(p, make_partition(labels, 3, seed=s)) for s in range(1, 5))
    assert len(make_partition(labels, 100, seed=0)) == 10


def test_samplers_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    list(RandomBatchSampler(20, 4, seed=1))
    list(MPerClassBatchSampler(_labels(), 2, 2, seed=1))
    list(NeighbourGroupSampler(_table(), 6, seed=1))
    make_partition(_labels(), 2, seed=1)
    assert torch.equal(state, torch.get_rng_state())
