"""SSDML pseudo-supervision: kNN graph, affinity propagation and triplet mining (seed 002, §"Triplet
Mining using Affinity Propagation"; spec SSDML §3, §4, §9).

Nodes are the items of one partition (all labeled items plus a random unlabeled subset), embedded
with the current network (the l2-normalised representation taken before L). The pieces, in order:

1. :func:`knn_graph` — ``N_k(i)``: the k nearest neighbours (Euclidean, self excluded, ties by index)
   and ``Q`` with ``Q_ij = 1/k`` for ``j ∈ N_k(i)`` (row-stochastic, n·k non-zeros).
2. :func:`initial_affinity` — ``W⁰``: +1 for same-class labeled pairs and on the whole diagonal, −1 for
   different-class labeled pairs, 0 elsewhere.
3. :func:`propagate` — ``W* = (1−γ)(I−γQ)⁻¹W⁰`` and the symmetrisation ``W = (W* + W*ᵀ)/2``, read
   only on the edges the mining needs (``E ∪ Eᵀ``, ``E = {(a, j): j ∈ N_k(a)}``).
4. :func:`mine_triplets` — sort each ``N_k(a)`` by ``W_a·`` (descending) and pair the first half
   (positives) with the second half (negatives) by rank: k/2 triplets per anchor.

The classical baselines (Deep-APLLR, Deep-APIT) reuse :func:`knn_graph` and :func:`propagate`.

**Algebra of the sparse solver.** Let ``B = (1−γ)(I−γQ)⁻¹`` (entrywise ≥ 0, row-stochastic). On the
labeled block ``W⁰ = 2YYᵀ − 11ᵀ`` (one-hot ``Y``; this also gives the +1 diagonal) and on the
unlabeled nodes ``W⁰ = I``. Hence, with ``H = B·Ỹ`` (``Ỹ``: n×C one-hot of the labeled nodes, 0
rows for unlabeled ones) and ``h = B·1_L``::

    W*_ij = 2 H[i, y_j] − h[i]   for a labeled j        (C + 1 solves in all)
    W*_ij = B[i, j]              for an unlabeled j     (one solve per unlabeled column)

Columns are solved in blocks, never forming an n×n matrix (memory O(n·block + n·k)), either by
BiCGSTAB (:func:`krylov_solve`, the default) or by the Neumann series ``X = (1−γ) Σ_t γᵗ Qᵗ R``
(:func:`neumann_solve`), both in :mod:`dmlkit.targets.propagation_solvers`. Both are certified: Q is
row-stochastic, so ``‖(I−γQ)⁻¹‖_∞ = 1/(1−γ)`` bounds the error by the residual, and for the series
``|Qˢ R| ≤ max|Q^{T+1} R|`` (s > T) bounds the tail by ``γ^{T+1} max|Q^{T+1} R|``. Every affinity read by the mining is within ``tol`` of the exact
value; the cost is O(iterations · n² k) multiply-adds (every unlabeled column needs its own solve).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from dmlkit.evaluation.knn import topk_block
from dmlkit.targets.propagation_solvers import _check_gamma, krylov_solve, neumann_solve

SYMMETRIZE_MODES = ("transpose", "literal", "none")
SOLVERS = ("auto", "dense", "sparse_krylov", "sparse_neumann", "partitioned")


@dataclass
class KnnGraph:
    """The kNN graph of one partition.

    Attributes:
        neighbours: long ``[n, k]``; row i lists ``N_k(i)`` by increasing distance, ties by index.
        distances: ``[n, k]`` squared Euclidean distances, same order.
        Q: scipy CSR ``[n, n]`` with ``Q_ij = 1/k`` for ``j ∈ N_k(i)``.
    """

    neighbours: Tensor
    distances: Tensor
    Q: sp.csr_matrix

    @property
    def n(self) -> int:
        return self.neighbours.shape[0]

    @property
    def k(self) -> int:
        return self.neighbours.shape[1]


@dataclass
class Propagation:
    """Propagated affinities on the kNN edges of every anchor.

    Attributes:
        affinity: ``[n, k]`` float64, ``W[a, N_k(a)[m]]`` after symmetrisation.
        forward: ``[n, k]`` ``W*[a, N_k(a)[m]]``; backward: ``[n, k]`` ``W*[N_k(a)[m], a]``.
        diagonal: ``[n]`` ``W*[a, a]`` (used by ``symmetrize="literal"``).
        solver: ``"dense"``, ``"sparse_krylov"`` or ``"sparse_neumann"``.
        tol: guaranteed entrywise error of ``affinity`` (0 for dense up to rounding; NaN for ``partitioned``: none).
        sweeps: the largest number of iterations (sweeps) any block needed (0 for dense).
    """

    affinity: Tensor
    forward: Tensor
    backward: Tensor
    diagonal: Tensor
    solver: str
    tol: float = 0.0
    sweeps: int = 0


def knn_graph(z: Tensor, k: int, include_self: bool = False, block_size: int = 2048) -> KnnGraph:
    """Exact kNN graph ``N_k`` and ``Q`` (seed 002: ``Q_ij = 1/k`` if ``z_j ∈ N_k(z_i)``).

    Distances are squared Euclidean on ``z`` (the l2-normalised representation before L), computed
    in row blocks (``[block_size, n]`` at a time, never n×n). Ties are broken by index exactly.

    Args:
        z: ``[n, d]`` node features (the computation runs in ``z``'s dtype and device).
        k: neighbours per node.
        include_self: whether i counts as its own neighbour (spec default: no).
        block_size: rows per distance block.

    Returns:
        :class:`KnnGraph`.
    """
    if z.dim() != 2:
        raise ValueError(f"knn_graph expects z of shape [n, d], got {tuple(z.shape)}")
    n = z.shape[0]
    if not 1 <= k <= n - (0 if include_self else 1):
        raise ValueError(f"k={k} neighbours need at least {k + (0 if include_self else 1)} nodes, got {n}; lower k")
    sq = (z * z).sum(1)
    neighbours, distances = [], []
    for start in range(0, n, block_size):
        rows = torch.arange(start, min(start + block_size, n), device=z.device)
        d = (sq[rows, None] + sq[None, :] - 2.0 * z[rows] @ z.T).clamp_min_(0.0)
        d[torch.arange(len(rows)), rows] = 0.0 if include_self else math.inf
        dist, idx = topk_block(d, k)  # the k smallest by (distance, index), exactly; no kthvalue pass
        neighbours.append(idx)
        distances.append(dist)
    nbr = torch.cat(neighbours).cpu()
    dist = torch.cat(distances).cpu()
    Q = sp.csr_matrix(
        (np.full(n * k, 1.0 / k), nbr.numpy().reshape(-1), np.arange(0, n * k + 1, k)), shape=(n, n)
    )
    return KnnGraph(nbr, dist, Q)


def initial_affinity(labels: Tensor) -> Tensor:
    """Dense ``W⁰`` ``[n, n]`` (small n only): +1 same-class labeled pairs and the diagonal, −1
    different-class labeled pairs, 0 otherwise (seed 002; spec §3). ``labels``: ``[n]``, −1 = unlabeled."""
    labels = torch.as_tensor(labels).long()
    lab = labels >= 0
    both = lab[:, None] & lab[None, :]
    w0 = torch.where(labels[:, None] == labels[None, :], 1.0, -1.0).double() * both
    w0.fill_diagonal_(1.0)
    return w0


def propagate_dense(Q: sp.spmatrix | Tensor, labels: Tensor, gamma: float, device: str | torch.device = "cpu") -> Tensor:
    """``W* = (1−γ)(I−γQ)⁻¹W⁰`` in closed form, ``[n, n]`` float64 on CPU (exact; O(n²) memory, O(n³)
    time; the LU solve runs on ``device``)."""
    _check_gamma(gamma)
    Qd = torch.as_tensor(Q.toarray()) if sp.issparse(Q) else torch.as_tensor(Q).double()
    n = Qd.shape[0]
    A = torch.eye(n, dtype=torch.float64, device=device) - gamma * Qd.double().to(device)
    return ((1.0 - gamma) * torch.linalg.solve(A, initial_affinity(labels).to(device))).cpu()


def symmetrize(w_star: Tensor, mode: str = "transpose") -> Tensor:
    """Dense symmetrisation. ``transpose``: ``(W* + W*ᵀ)/2`` (spec T1, default); ``literal``: the
    seed's printed ``(W*_ij + W*_ii)/2``; ``none``: ``W*``."""
    _check_mode(mode)
    if mode == "transpose":
        return 0.5 * (w_star + w_star.T)
    if mode == "literal":
        return 0.5 * (w_star + w_star.diagonal()[:, None])
    return w_star


def propagate(
    graph: KnnGraph,
    labels: Tensor,
    gamma: float = 0.99,
    symmetrize: str = "transpose",
    solver: str = "auto",
    tol: float = 1e-6,
    dense_max: int = 20_000,
    block_size: int = 512,
    device: str | torch.device = "cpu",
    part_size: int = 250,
    local_factor: float = 8.0,
) -> Propagation:
    """Propagated, symmetrised affinities ``W[a, j]`` for every ``j ∈ N_k(a)``.

    Args:
        graph: from :func:`knn_graph`.
        labels: ``[n]`` visible labels of the nodes (−1 = unlabeled).
        gamma: propagation weight (seed: 0.99).
        symmetrize: ``transpose`` | ``literal`` | ``none`` (see :func:`symmetrize`).
        solver: ``dense`` (closed form), ``sparse_krylov`` (block BiCGSTAB) or ``sparse_neumann``
            (block Neumann series) — both sparse solvers use O(n·block + n·k) memory and certify
            every entry to ``tol`` — or ``auto`` (dense when ``n ≤ dense_max``, else ``sparse_krylov``).
            ``partitioned``: local sparse-LU solves on parts of ``part_size`` nodes within
            ``local_factor × part_size`` of the nodes their walks visit most, a correction for the walks that leave them and exact labeled columns
            (:mod:`dmlkit.targets.propagation_parts`; fast at n = 60,000 but approximate: not certified,
            measured against dense in docs/speed.md); the dense solve when ``n ≤ part_size``.
        tol: sparse solver's guaranteed entrywise error on W.
        block_size: unlabeled columns solved together (sparse).
        part_size: core nodes per part (``partitioned``).
        local_factor: nodes of each local system per core node (``partitioned``).
        device: where the solves run.
    """
    _check_mode(symmetrize)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got '{solver}'")
    labels = torch.as_tensor(labels).long().cpu()
    n, k = graph.n, graph.k
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape [{n}] (one per graph node), got {tuple(labels.shape)}")
    if solver == "auto":
        solver = "dense" if n <= dense_max else "sparse_krylov"
    elif solver == "partitioned" and n <= part_size:  # a single part is the whole graph: solve it exactly
        solver = "dense"
    forward, backward, diagonal, sweeps, bound = _edge_affinities(graph, labels, gamma, solver, tol, block_size,
                                                                  device, part_size, local_factor)
    forward, backward = forward.view(n, k), backward.view(n, k)
    if symmetrize == "transpose":
        affinity = 0.5 * (forward + backward)
    elif symmetrize == "literal":
        affinity = 0.5 * (forward + diagonal[:, None])
    else:
        affinity = forward
    return Propagation(affinity, forward, backward, diagonal, solver, bound, sweeps)


def mine_triplets(neighbours: Tensor, affinity: Tensor, tie_tol: float = 1e-12) -> Tensor:
    """Triplets from each anchor's sorted neighbourhood (seed 002, Fig. 1b; spec §4).

    ``N_k(a)`` is sorted by ``W[a, ·]`` descending (ties: kNN rank, which already orders by distance
    then index); the first half are positives, the second half negatives, paired by rank:
    ``(a, z_1, z_{k/2+1}), …, (a, z_{k/2}, z_k)``. Affinities are compared on a grid of ``tie_tol``
    so that values equal in exact arithmetic but a rounding error apart count as ties.

    Args:
        neighbours: long ``[n, k]`` (k even), rows ordered by kNN rank.
        affinity: ``[n, k]`` ``W[a, neighbours[a, m]]``.
        tie_tol: affinities closer than this (on a grid) are ties.

    Returns:
        long ``[n·k/2, 3]`` (anchor, positive, negative), anchor-major.
    """
    n, k = neighbours.shape
    if k % 2:
        raise ValueError(f"triplet mining pairs halves of the neighbourhood, so k must be even; got k={k}")
    if tie_tol <= 0:
        raise ValueError(f"tie_tol must be positive, got {tie_tol}")
    key = torch.round(affinity.double() / tie_tol)
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    ranked = neighbours.gather(1, order)
    anchors = torch.arange(n).repeat_interleave(k // 2)
    return torch.stack([anchors, ranked[:, : k // 2].reshape(-1), ranked[:, k // 2 :].reshape(-1)], dim=1)


def uncertified_pairs(affinity: Tensor, tol: float) -> int:
    """Adjacent pairs in each sorted neighbourhood whose gap is ≤ 2·tol (their order is not certified
    by the sparse solver's bound; they fall back to the kNN-rank tie rule)."""
    values = torch.sort(affinity, dim=1, descending=True).values
    return int(((values[:, :-1] - values[:, 1:]) <= 2 * tol).sum())


# ---------------------------------------------------------------------------------------------- internals

def _edge_affinities(
    graph: KnnGraph, labels: Tensor, gamma: float, solver: str, tol: float, block_size: int,
    device: str | torch.device, part_size: int, local_factor: float,
) -> tuple[Tensor, Tensor, Tensor, int, float]:
    """W* on E (forward ``[n·k]``), on Eᵀ (backward ``[n·k]``), its diagonal ``[n]``, the solver's
    sweeps and its entrywise error bound (0 dense, ``tol`` sparse, NaN partitioned)."""
    n, k = graph.n, graph.k
    rows = torch.arange(n).repeat_interleave(k)  # edge (rows[e], cols[e]) for e in E, row-major
    cols = graph.neighbours.reshape(-1)
    if solver == "dense":
        w_star = propagate_dense(graph.Q, labels, gamma, device)
        forward, backward, diagonal = w_star[rows, cols], w_star[cols, rows], w_star.diagonal().clone()
        sweeps, bound = 0, 0.0
    elif solver == "partitioned":
        from dmlkit.targets.propagation_parts import propagate_partitioned

        forward, backward, diagonal = propagate_partitioned(graph.Q, graph.neighbours, labels, gamma, part_size,
                                                            local_factor)
        sweeps, bound = 0, math.nan
    else:
        solve = krylov_solve if solver == "sparse_krylov" else neumann_solve
        forward, backward, diagonal, sweeps = _propagate_sparse(graph.Q, labels, rows, cols, gamma, tol, block_size,
                                                                device, solve)
        bound = tol
    return forward, backward, diagonal, sweeps, bound


def labeled_columns(
    Q: sp.spmatrix, labels: Tensor, rows: Tensor, cols: Tensor, gamma: float, tol: float, forward: Tensor,
    backward: Tensor, diagonal: Tensor, solve: Callable[..., tuple[Tensor, int]] = krylov_solve,
    device: str | torch.device = "cpu",
) -> int:
    """Write, in place, every affinity in a labeled column: ``W*[i, j] = 2H[i, y_j] − h[i]`` for labeled j,
    with ``H = B·Ỹ`` and ``h = B·1_L`` (C + 1 solves; each entry within ``tol``). ``forward`` ``[E]`` holds
    ``W*[rows, cols]``, ``backward`` ``[E]`` ``W*[cols, rows]``, ``diagonal`` ``[n]``. Returns the sweeps used."""
    labeled = labels >= 0
    if not labeled.any():
        return 0
    classes, y = torch.unique(labels[labeled], return_inverse=True)
    y_full = torch.full((len(labels),), -1, dtype=torch.long)
    y_full[labeled] = y
    rhs = torch.zeros(len(labels), len(classes) + 1, dtype=torch.float64)
    rhs[labeled.nonzero().squeeze(1), y] = 1.0
    rhs[labeled, -1] = 1.0
    Hh, sweeps = solve(Q, rhs, gamma, tol / 3.0, device=device)  # error of 2H − h: ≤ 2·tol/3 + tol/3
    Hh = Hh.cpu()
    H, h = Hh[:, :-1], Hh[:, -1]
    f = labeled[cols]
    forward[f] = 2.0 * H[rows[f], y_full[cols[f]]] - h[rows[f]]
    b = labeled[rows]
    backward[b] = 2.0 * H[cols[b], y_full[rows[b]]] - h[cols[b]]
    diagonal[labeled] = 2.0 * H[labeled, y] - h[labeled]
    return sweeps


def _propagate_sparse(
    Q: sp.spmatrix, labels: Tensor, rows: Tensor, cols: Tensor, gamma: float, tol: float, block_size: int,
    device: str | torch.device, solve: Callable[..., tuple[Tensor, int]],
) -> tuple[Tensor, Tensor, Tensor, int]:
    """W* on E (forward), on Eᵀ (backward) and its diagonal, each entry within ``tol``."""
    n = Q.shape[0]
    labeled = labels >= 0
    forward = torch.empty(len(rows), dtype=torch.float64)
    backward = torch.empty(len(rows), dtype=torch.float64)
    diagonal = torch.empty(n, dtype=torch.float64)
    sweeps = labeled_columns(Q, labels, rows, cols, gamma, tol, forward, backward, diagonal, solve, device)
    position = torch.full((n,), -1, dtype=torch.long)
    unlabeled = (~labeled).nonzero().squeeze(1)
    for start in range(0, len(unlabeled), block_size):
        block = unlabeled[start : start + block_size]
        position[block] = torch.arange(len(block))
        rhs = torch.zeros(n, len(block), dtype=torch.float64)
        rhs[block, torch.arange(len(block))] = 1.0
        X, used = solve(Q, rhs, gamma, tol, device=device)
        sweeps = max(sweeps, used)
        X = X.cpu()
        f = position[cols] >= 0  # forward edges (a, j) with j in the block: W*[a, j] = X[a, pos(j)]
        forward[f] = X[rows[f], position[cols[f]]]
        b = position[rows] >= 0  # backward edges: W*[N_k(a)[m], a] with a in the block
        backward[b] = X[cols[b], position[rows[b]]]
        diagonal[block] = X[block, torch.arange(len(block))]
        position[block] = -1
    return forward, backward, diagonal, sweeps


def _check_mode(mode: str) -> None:
    if mode not in SYMMETRIZE_MODES:
        raise ValueError(f"symmetrize must be one of {SYMMETRIZE_MODES}, got '{mode}'")
