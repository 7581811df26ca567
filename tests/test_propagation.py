"""SSDML affinity propagation and triplet mining (spec SSDML §3, §4, §9, §12 tests 1–5)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dmlkit.targets.propagation import (
    KnnGraph,
    initial_affinity,
    knn_graph,
    mine_triplets,
    neumann_solve,
    propagate,
    propagate_dense,
    symmetrize,
    uncertified_pairs,
)


def graph_from_lists(neighbours: list[list[int]]) -> KnnGraph:
    nbr = torch.tensor(neighbours)
    n, k = nbr.shape
    Q = sp.csr_matrix((np.full(n * k, 1.0 / k), nbr.numpy().ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    return KnnGraph(nbr, torch.zeros(n, k, dtype=torch.float64), Q)


def random_graph(n: int, k: int, d: int = 6, clusters: int = 3, seed: int = 0) -> tuple[KnnGraph, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(clusters, d, generator=gen, dtype=torch.float64)
    truth = torch.arange(n) % clusters
    z = centres[truth] + torch.randn(n, d, generator=gen, dtype=torch.float64)
    labels = torch.full((n,), -1)
    labels[: 3 * clusters] = truth[: 3 * clusters]  # three labeled nodes per class
    return knn_graph(z, k), labels


# ------------------------------------------------------------------------------ spec test 1: four nodes
FOUR_W_STAR = torch.tensor([[1, 1, -1, 0], [1, 1, -1, 0], [-2 / 3, -2 / 3, 2 / 3, 1 / 3], [-1 / 3, -1 / 3, 1 / 3, 2 / 3]],
                           dtype=torch.float64)


def test_four_node_graph_by_hand():
    graph = graph_from_lists([[1], [0], [3], [2]])
    labels = torch.tensor([0, 0, 1, -1])
    w_star = propagate_dense(graph.Q, labels, gamma=0.5)
    torch.testing.assert_close(w_star, FOUR_W_STAR, atol=1e-12, rtol=0)
    w = symmetrize(w_star)
    assert w[0, 2] == pytest.approx(-5 / 6) and w[0, 3] == pytest.approx(-1 / 6) and w[2, 3] == pytest.approx(1 / 3)
    for solver in ("dense", "sparse_krylov", "sparse_neumann"):
        prop = propagate(graph, labels, gamma=0.5, solver=solver, tol=1e-10)
        # edges: 0->1, 1->0, 2->3, 3->2
        assert prop.affinity[:, 0].tolist() == pytest.approx([1.0, 1.0, 1 / 3, 1 / 3], abs=1e-9)
        assert prop.forward[:, 0].tolist() == pytest.approx([1.0, 1.0, 1 / 3, 1 / 3], abs=1e-9)
        assert prop.diagonal.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 2 / 3], abs=1e-9)


def test_initial_affinity():
    w0 = initial_affinity(torch.tensor([0, 0, 1, -1]))
    expected = torch.tensor([[1, 1, -1, 0], [1, 1, -1, 0], [-1, -1, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    assert torch.equal(w0, expected)


# ------------------------------------------------------------------------------ spec test 2: six points
def test_six_points_on_a_line():
    z = torch.tensor([0, 1, 2, 3.5, 4, 5.2], dtype=torch.float64)[:, None]
    labels = torch.tensor([0, 0, -1, -1, -1, 1])
    graph = knn_graph(z, 2)
    assert graph.neighbours.tolist() == [[1, 2], [0, 2], [1, 3], [4, 2], [3, 5], [4, 3]]
    w = symmetrize(propagate_dense(graph.Q, labels, gamma=0.9))
    expected = {(2, 1): .2338, (2, 3): .2288, (4, 3): .2220, (4, 5): .0874, (5, 4): .0874, (5, 3): .0786, (0, 5): -.1941}
    for (i, j), value in expected.items():
        assert round(float(w[i, j]), 4) == value
    for solver in ("dense", "sparse_krylov", "sparse_neumann"):
        prop = propagate(graph, labels, gamma=0.9, solver=solver, tol=1e-9)
        torch.testing.assert_close(prop.affinity, w[torch.arange(6)[:, None], graph.neighbours], atol=1e-8, rtol=0)
        triplets = mine_triplets(graph.neighbours, prop.affinity)
        assert triplets.tolist() == [[0, 1, 2], [1, 0, 2], [2, 1, 3], [3, 2, 4], [4, 3, 5], [5, 4, 3]]


# ------------------------------------------------------------------------------ kNN graph
def test_knn_graph_matches_slow_reference_with_ties():
    gen = torch.Generator().manual_seed(3)
    z = torch.randint(0, 3, (40, 2), generator=gen).double()  # a small grid: many exact ties
    graph = knn_graph(z, 5, block_size=7)
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    for i in range(40):
        ref = sorted((j for j in range(40) if j != i), key=lambda j: (float(d[i, j]), j))[:5]
        assert graph.neighbours[i].tolist() == ref
    assert graph.Q.nnz == 200 and np.allclose(np.asarray(graph.Q.sum(1)).ravel(), 1.0)
    with_self = knn_graph(z, 5, include_self=True)
    for i in range(40):
        ref = sorted(range(40), key=lambda j: (float(d[i, j]), j))[:5]
        assert with_self.neighbours[i].tolist() == ref


def test_knn_graph_rejects_too_few_nodes():
    with pytest.raises(ValueError, match="lower k"):
        knn_graph(torch.randn(4, 2), 4)


# ------------------------------------------------------------------------------ spec test 3: invariants
def test_propagation_invariants_on_random_graphs():
    for seed in range(3):
        graph, labels = random_graph(60, 4, seed=seed)
        B = propagate_dense(graph.Q, torch.full((60,), -1), gamma=0.9)  # W⁰ = I, so W* = B
        assert (B >= -1e-12).all()
        torch.testing.assert_close(B.sum(1), torch.ones(60, dtype=torch.float64))
        w_star = propagate_dense(graph.Q, labels, gamma=0.99)
        assert w_star.abs().max() <= 1 + 1e-9
        assert (w_star[:, labels < 0] >= -1e-12).all()  # unlabeled columns are columns of B
        w = symmetrize(w_star)
        assert torch.equal(w, w.T)
        lit = propagate(graph, labels, 0.99, symmetrize="literal", solver="dense")
        none = propagate(graph, labels, 0.99, symmetrize="none", solver="dense")
        assert torch.equal(mine_triplets(graph.neighbours, lit.affinity), mine_triplets(graph.neighbours, none.affinity))


def test_labeled_affinities_keep_their_sign_on_clustered_data():
    graph, labels = random_graph(90, 6, clusters=3, seed=1)
    w = symmetrize(propagate_dense(graph.Q, labels, gamma=0.99))
    lab = (labels >= 0).nonzero().squeeze(1)
    same = labels[lab][:, None] == labels[lab][None, :]
    block = w[lab][:, lab]
    assert (block[same] > 0).all() and (block[~same] < 0).all()


# ------------------------------------------------------------------------------ spec test 4: mining and counts
def test_triplets_come_from_the_neighbourhood_and_pair_by_rank():
    graph, labels = random_graph(50, 6, seed=2)
    prop = propagate(graph, labels, 0.99)
    triplets = mine_triplets(graph.neighbours, prop.affinity)
    assert triplets.shape == (50 * 3, 3)
    edges = {(a, int(j)) for a in range(50) for j in graph.neighbours[a]}
    assert all((int(a), int(p)) in edges and (int(a), int(q)) in edges for a, p, q in triplets)
    # within each anchor: every positive's affinity ≥ its paired negative's, positives in descending order
    w = {(a, int(j)): float(prop.affinity[a, m]) for a in range(50) for m, j in enumerate(graph.neighbours[a])}
    for a, p, q in triplets.tolist():
        assert w[(a, p)] >= w[(a, q)]
    per_anchor = triplets.view(50, 3, 3)
    assert (per_anchor[:, :, 0] == torch.arange(50)[:, None]).all()


def test_ties_fall_back_to_knn_rank():
    neighbours = torch.tensor([[5, 3, 9, 1]])
    triplets = mine_triplets(neighbours, torch.zeros(1, 4, dtype=torch.float64))
    assert triplets.tolist() == [[0, 5, 9], [0, 3, 1]]


@pytest.mark.parametrize("n,k,count", [(100 + 9000, 10, 45_500), (5864, 50, 146_600), (8054, 50, 201_350)])
def test_triplet_counts_of_the_paper(n, k, count):
    gen = torch.Generator().manual_seed(0)
    neighbours = torch.randint(0, n, (n, k), generator=gen)
    assert mine_triplets(neighbours, torch.rand(n, k, generator=gen)).shape == (count, 3)


def test_odd_k_is_rejected():
    with pytest.raises(ValueError, match="k must be even"):
        mine_triplets(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 3))


# ------------------------------------------------------------------------------ spec test 5: sparse = dense
def test_sparse_matches_dense_and_mines_the_same_triplets():
    gen = torch.Generator().manual_seed(0)
    n = 400  # the n = 2,000 check of spec §12.5 runs in experiments/propagation_scaling.py
    centres = 2.0 * torch.randn(10, 16, generator=gen, dtype=torch.float64)
    truth = torch.arange(n) % 10
    z = torch.nn.functional.normalize(centres[truth] + torch.randn(n, 16, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.full((n,), -1)
    labels[:40] = truth[:40]
    graph = knn_graph(z, 10)
    dense = propagate(graph, labels, 0.99, solver="dense")
    sparse = propagate(graph, labels, 0.99, solver="sparse_krylov", tol=1e-6, block_size=256)
    assert (sparse.forward - dense.forward).abs().max() <= 1e-6
    assert (sparse.backward - dense.backward).abs().max() <= 1e-6
    assert (sparse.affinity - dense.affinity).abs().max() <= 1e-6
    same = (mine_triplets(graph.neighbours, sparse.affinity) == mine_triplets(graph.neighbours, dense.affinity))
    assert same.all(dim=1).view(n, 5).all(dim=1).float().mean() >= 0.99
    assert uncertified_pairs(sparse.affinity, sparse.tol) < 0.05 * n * 9


def test_neumann_series_respects_its_bound():
    graph, _ = random_graph(80, 4, seed=4)
    gamma = 0.9
    exact = (1 - gamma) * torch.linalg.inv(torch.eye(80, dtype=torch.float64) - gamma * torch.as_tensor(graph.Q.toarray()))
    for sweeps in (5, 20, 60):
        approx, used = neumann_solve(graph.Q, np.eye(80), gamma, tol=1e-300, max_sweeps=sweeps)
        assert used == sweeps
        assert (approx - exact).abs().max() <= gamma ** (sweeps + 1)
    certified, _ = neumann_solve(graph.Q, np.eye(80), gamma, tol=1e-7)
    assert (certified - exact).abs().max() <= 1e-7


def test_bad_arguments_name_the_problem():
    graph, labels = random_graph(20, 2)
    with pytest.raises(ValueError, match="gamma"):
        propagate(graph, labels, gamma=1.0)
    with pytest.raises(ValueError, match="symmetrize"):
        propagate(graph, labels, symmetrize="mean")
    with pytest.raises(ValueError, match="labels must have shape"):
        propagate(graph, labels[:5])
    assert math.isfinite(float(propagate(graph, labels, solver="sparse_krylov").affinity.sum()))
