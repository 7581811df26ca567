"""SSDML's partitioned propagation (dmlkit.targets.propagation_parts): exact with one part, local
solves equal to a dense inverse of their system and losing exactly the walks that leave it, local systems
that keep the most visited nodes, exact labeled columns, parts that cover every node, and agreement with the dense
solve on the mined triplets of a clustered graph."""
from __future__ import annotations

import pytest
import scipy.sparse as sp
import torch

from dmlkit.targets.propagation import knn_graph, mine_triplets, propagate, propagate_dense
from dmlkit.targets.propagation_parts import _local_solve, graph_parts, local_nodes, propagate_partitioned


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
B = propagate_dense(GRAPH.Q, torch.full((600,), -1), 0.99)  # B itself: no labels
Q_T = sp.csr_matrix(GRAPH.Q.T)


def test_one_part_is_the_dense_solve():
    one = propagate(GRAPH, LABELS, 0.99, solver="partitioned", part_size=len(LABELS))
    assert one.solver == "dense"  # a single part is the whole graph: propagate() solves it exactly
    for name in ("forward", "backward", "diagonal", "affinity"):
        assert torch.allclose(getattr(one, name), getattr(DENSE, name), rtol=0, atol=1e-12), name
    # the solver itself: one part whose local system is the whole graph has no exits, so it is exact too
    forward, backward, diagonal = propagate_partitioned(GRAPH.Q, GRAPH.neighbours, LABELS, 0.99, part_size=600,
                                                        local_factor=1.0)
    assert torch.allclose(forward.view(600, 10), DENSE.forward, rtol=0, atol=1e-9)
    assert torch.allclose(backward.view(600, 10), DENSE.backward, rtol=0, atol=1e-9)
    assert torch.allclose(diagonal, DENSE.diagonal, rtol=0, atol=1e-9)


def test_parts_cover_every_node_and_respect_the_size_cap():
    part = graph_parts(GRAPH.Q, 100)
    sizes = torch.bincount(part)
    assert part.shape == (600,) and int(sizes.sum()) == 600
    assert int(sizes.max()) <= 200 and int((sizes > 0).sum()) >= 6


def test_local_nodes_keep_the_core_its_neighbours_then_the_most_visited():
    path = torch.tensor([[1], [2], [3], [4], [4]])  # i -> i+1 on a 5-node path; 4 -> 4 keeps every walk
    q_t = sp.csr_matrix(sp.csr_matrix(([1.0] * 5, path.flatten().numpy(), range(6)), shape=(5, 5)).T)
    # visits from node 0 over 8 steps: node 2 gets 0.99^2, node 3 0.99^3, node 4 0.99^4 + ... + 0.99^8
    assert local_nodes(q_t, path, torch.tensor([0]), 3, 0.99).tolist() == [0, 1, 4]
    assert local_nodes(q_t, path, torch.tensor([0]), 4, 0.99).tolist() == [0, 1, 2, 4]
    assert local_nodes(q_t, path, torch.tensor([0]), 1, 0.99).tolist() == [0, 1]  # the neighbours stay
    assert local_nodes(q_t, path, torch.tensor([3]), 5, 0.99).tolist() == [3, 4]  # only what walks reach
    core = torch.arange(0, 120, 6)  # 20 nodes of one cluster: 79 with their neighbours, 94 reachable
    idx = local_nodes(Q_T, GRAPH.neighbours, core, 85, 0.99)
    assert len(idx) == 85 and set(GRAPH.neighbours[core].flatten().tolist()) <= set(idx.tolist())
    with pytest.raises(ValueError, match="local_factor must be >= 1"):
        propagate_partitioned(GRAPH.Q, GRAPH.neighbours, LABELS, 0.99, part_size=100, local_factor=0.5)


def test_local_solve_is_the_inverse_of_its_system_and_loses_the_walks_that_leave():
    core = torch.arange(0, 120, 6)
    idx = local_nodes(Q_T, GRAPH.neighbours, core, 80, 0.99)
    local = torch.searchsorted(idx, core)
    rows, cols, escape, exits = _local_solve(GRAPH.Q, idx, local, 0.99)
    sub = torch.as_tensor(GRAPH.Q[idx.numpy()][:, idx.numpy()].toarray())
    b_v = 0.01 * torch.linalg.inv(torch.eye(len(idx), dtype=torch.float64) - 0.99 * sub)  # the reference, densely
    assert torch.allclose(rows, b_v[local], atol=1e-12) and torch.allclose(cols, b_v[:, local], atol=1e-12)
    assert torch.allclose(escape, 1.0 - b_v.sum(1), atol=1e-12) and (escape > 0).any()
    assert (rows <= B[core][:, idx] + 1e-12).all()  # walks leaving V are lost: B_V <= B
    assert exits.sum() == pytest.approx(1.0) and (exits[idx.numpy()] == 0).all()  # first exits lie outside V
    wider_idx = local_nodes(Q_T, GRAPH.neighbours, core, 94, 0.99)  # a larger V keeps more walks: B_V <= B_V' <= B
    assert set(idx.tolist()) <= set(wider_idx.tolist())
    wider_rows = _local_solve(GRAPH.Q, wider_idx, torch.searchsorted(wider_idx, core), 0.99)[0]
    inner = torch.searchsorted(wider_idx, idx)
    assert (rows <= wider_rows[:, inner] + 1e-12).all() and (wider_rows[:, inner] > rows + 1e-9).any()


def test_labeled_columns_are_exact_with_many_parts():
    forward, backward, _ = propagate_partitioned(GRAPH.Q, GRAPH.neighbours, LABELS, 0.99, part_size=100,
                                                 local_factor=1.5)
    forward, backward = forward.view(600, 10), backward.view(600, 10)
    into_labeled = LABELS[GRAPH.neighbours] >= 0
    from_labeled = (LABELS >= 0).unsqueeze(1).expand(-1, 10)
    assert into_labeled.any() and from_labeled.any()
    assert torch.allclose(forward[into_labeled], DENSE.forward[into_labeled], rtol=0, atol=1e-9)
    assert torch.allclose(backward[from_labeled], DENSE.backward[from_labeled], rtol=0, atol=1e-9)


def test_mined_triplets_agree_with_the_dense_solve():
    parts = propagate(GRAPH, LABELS, 0.99, solver="partitioned", part_size=100, local_factor=2.0)
    same = mine_triplets(GRAPH.neighbours, parts.affinity) == mine_triplets(GRAPH.neighbours, DENSE.affinity)
    assert same.all(dim=1).float().mean() >= 0.99
    assert (parts.affinity - DENSE.affinity).abs().max() > 1e-6  # six parts: an approximation of the values
