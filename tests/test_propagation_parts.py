"""SSDML's partitioned propagation (dmlkit.targets.propagation_parts): exact with one part, local
solves that lose exactly the walks leaving their nodes, parts that cover every node, and agreement with
the dense solve on the mined triplets of a clustered graph."""
from __future__ import annotations

import pytest
import torch

from dmlkit.targets.propagation import knn_graph, mine_triplets, propagate, propagate_dense
from dmlkit.targets.propagation_parts import _local_solve, graph_parts


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


def test_local_solve_absorbs_walks_that_leave_and_reports_where_they_go():
    idx = torch.arange(0, 300)  # half of the nodes (labeled ones included: idx holds 0..17)
    local_b, escape, exits = _local_solve(GRAPH.Q, idx, torch.arange(50), LABELS[idx], 0.99, torch.float64, "cpu")
    dense_b = propagate_dense(GRAPH.Q, torch.full((600,), -1), 0.99)  # B itself: no labels
    unl = torch.arange(18, 300)  # unlabeled columns of the local system hold B_V
    assert (local_b[:, unl] <= dense_b[:300][:, unl] + 1e-12).all()  # walks leaving V are lost: B_V <= B
    assert (escape > 0).any() and (escape <= 1).all()
    assert exits.sum() == pytest.approx(1.0) and (exits[:300] == 0).all()  # first exits lie outside V


def test_mined_triplets_agree_with_the_dense_solve():
    parts = propagate(GRAPH, LABELS, 0.99, solver="partitioned", part_size=100)
    same = mine_triplets(GRAPH.neighbours, parts.affinity) == mine_triplets(GRAPH.neighbours, DENSE.affinity)
    assert same.all(dim=1).float().mean() >= 0.99
    assert (parts.affinity - DENSE.affinity).abs().max() > 1e-6  # six parts: an approximation of the values
