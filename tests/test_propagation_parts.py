"""SSDML's partitioned propagation (dmlkit.targets.propagation_parts): exact with one part, a lower
bound of the dense affinities on unlabeled columns (absorbed walks), parts that cover every node, and
high agreement with the dense solve on the mined triplets of a clustered graph."""
from __future__ import annotations

import torch

from dmlkit.targets.propagation import knn_graph, mine_triplets, propagate
from dmlkit.targets.propagation_parts import graph_parts


def clustered_graph(n: int = 600, clusters: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(clusters, 16, generator=gen, dtype=torch.float64)
    truth = torch.arange(n) % clusters
    z = torch.nn.functional.normalize(centres[truth] + torch.randn(n, 16, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.full((n,), -1)
    labels[: 3 * clusters] = truth[: 3 * clusters]
    return knn_graph(z, 10), labels


GRAPH, LABELS = clustered_graph()
DENSE = propagate(GRAPH, LABELS, 0.99, solver="dense")


def test_one_part_is_the_dense_solve():
    one = propagate(GRAPH, LABELS, 0.99, solver="partitioned", part_size=len(LABELS))
    for name in ("forward", "backward", "diagonal", "affinity"):
        assert torch.allclose(getattr(one, name), getattr(DENSE, name), rtol=0, atol=1e-12), name


def test_parts_cover_every_node_and_respect_the_size_cap():
    part = graph_parts(GRAPH.Q, 100)
    sizes = torch.bincount(part)
    assert part.shape == (600,) and int(sizes.sum()) == 600
    assert int(sizes.max()) <= 200 and int((sizes > 0).sum()) >= 6


def test_absorbed_walks_bound_the_dense_affinities_from_below_on_unlabeled_columns():
    parts = propagate(GRAPH, LABELS, 0.99, solver="partitioned", part_size=100)
    unlabeled_j = (LABELS[GRAPH.neighbours] < 0)
    unlabeled_a = (LABELS < 0).unsqueeze(1).expand_as(unlabeled_j)
    assert (parts.forward[unlabeled_j] <= DENSE.forward[unlabeled_j] + 1e-12).all()  # B_V <= B entrywise
    assert (parts.backward[unlabeled_a] <= DENSE.backward[unlabeled_a] + 1e-12).all()
    assert (parts.forward[unlabeled_j] > 0).all()  # every neighbour is inside its anchor's local system


def test_mined_triplets_mostly_agree_with_the_dense_solve():
    parts = propagate(GRAPH, LABELS, 0.99, solver="partitioned", part_size=150)
    same = mine_triplets(GRAPH.neighbours, parts.affinity) == mine_triplets(GRAPH.neighbours, DENSE.affinity)
    assert same.all(dim=1).float().mean() >= 0.9
    assert (parts.affinity - DENSE.affinity).abs().max() > 1e-6  # four parts: an approximation of the values
