"""SSDML's propagation on large graphs by partitioned local solves (``solver="partitioned"``).

Mining reads ``W*`` only on ``E ∪ Eᵀ`` (each anchor's kNN edges, both directions), but every one of
those entries depends on all n columns of ``B = (1−γ)(I−γQ)⁻¹`` (a walk with γ = 0.99 lasts 99 steps
on average), so an exact answer at n = 60,000 costs ~10¹² multiply-adds whatever the solver
(docs/speed.md). This solver trades exactness for locality, as overlapping domain decomposition does:

1. **Labeled columns, exactly.** ``W*[i, j] = 2H[i, y_j] − h[i]`` for a labeled j (``H = BỸ``,
   ``h = B·1_L``: C + 1 global solves, as the certified sparse solver does).
2. **Parts.** The nodes are split into ``⌈n / part_size⌉`` parts of nodes that random walks connect:
   k-means on 16 random signals smoothed by 8 steps of Q (nodes a few steps apart get alike
   coordinates), parts over ``2·part_size`` split again.
3. **Local solve.** Each part's core, every kNN neighbour of a core node, and the nodes its walks visit
   most, ``local_factor × part_size`` nodes in all (V, :func:`local_nodes`), are solved by a dense LU
   of ``I − γQ_VV``: ``B_V = (1−γ)(I − γQ_VV)⁻¹``, only the rows and columns of the core nodes. Walks
   that leave V are absorbed (Dirichlet boundary), so ``B_V ≤ B`` entrywise and every walk that stays
   in V is exact.
4. **Long walks.** ``B[a, j] ≈ B_V[a, j] + e_a ρ_p[j]`` (:func:`_add_long_walks`) on unlabeled columns.

Cost: one dense LU of ``m = local_factor × part_size`` nodes and ``2·part_size`` solves per part
(``n / part_size · (⅔m³ + 4m²·part_size)`` multiply-adds), O(m²) memory. With a single
part (``n ≤ part_size``) :func:`dmlkit.targets.propagation.propagate` uses the dense solve. Agreement with
the dense solve on the mined triplets is measured, not certified (``experiments/propagation_partitioned.py``).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from dmlkit.kmeans import kmeans
from dmlkit.targets.propagation import labeled_columns
from dmlkit.targets.propagation_solvers import krylov_solve

SIGNALS, SMOOTHING_STEPS = 16, 8
WALK_STEPS = 8  # walk steps that rank the nodes a part's local system keeps
LABELED_TOL = 1e-10  # the global solves (labeled columns, long walks): far below the ~1e-5 gaps that order a neighbourhood


def graph_parts(Q: sp.spmatrix, part_size: int, seed: int = 0) -> Tensor:
    """Part id ``[n]`` of every node: about ``part_size`` nodes per part, grouped by random-walk proximity.

    k-means on ``Q⁸G`` (G: ``[n, 16]`` Gaussian signals): averaging over 8 walk steps makes nodes
    that walks connect alike. Parts larger than ``2·part_size`` are split again the same way.
    """
    n = Q.shape[0]
    parts = math.ceil(n / part_size)
    if parts <= 1:
        return torch.zeros(n, dtype=torch.long)
    signals = np.random.default_rng(seed).standard_normal((n, SIGNALS))
    for _ in range(SMOOTHING_STEPS):
        signals = Q @ signals
    coords = torch.from_numpy(signals).float()
    part = kmeans(coords, parts, iters=30, init="random", seed=seed)
    sizes = torch.bincount(part, minlength=parts)
    next_id = parts
    for p in torch.nonzero(sizes > 2 * part_size).flatten().tolist():
        members = torch.nonzero(part == p).flatten()
        sub = kmeans(coords[members], math.ceil(len(members) / part_size), iters=30, init="random", seed=seed)
        part[members[sub > 0]] = next_id + sub[sub > 0] - 1
        next_id += int(sub.max())
    return part


def local_nodes(Q_t: sp.csr_matrix, neighbours: Tensor, core: Tensor, size: int, gamma: float) -> Tensor:
    """Sorted node ids of a part's local system: its core, every kNN neighbour of a core node, then the
    nodes the core's walks visit most, ``s = Σ_{t≤8} (γQᵀ)ᵗ u`` (``u`` uniform on the core), up to ``size``
    nodes in all. For a given size this loses less walk mass than whole kNN hops (a hop can triple V).

    ``Q_t``: ``Qᵀ`` in CSR; ``core``: long ``[c]``.
    """
    mass = np.zeros(Q_t.shape[0])
    mass[core.numpy()] = 1.0 / len(core)
    visits = mass.copy()
    for _ in range(WALK_STEPS):
        mass = gamma * (Q_t @ mass)
        visits += mass
    visits[core.numpy()] = visits[neighbours[core].reshape(-1).numpy()] = np.inf  # always kept
    kept = min(max(size, int(np.isinf(visits).sum())), int((visits > 0).sum()))
    return torch.from_numpy(np.sort(np.argpartition(-visits, kept - 1)[:kept]))


def propagate_partitioned(
    Q: sp.spmatrix, neighbours: Tensor, labels: Tensor, gamma: float, part_size: int = 250, local_factor: float = 8.0,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(forward [n·k], backward [n·k], diagonal [n])`` of ``W*`` by partitioned local solves (module doc).

    Args:
        Q: row-stochastic kNN matrix ``[n, n]``; ``neighbours``: long ``[n, k]``, row i = ``N_k(i)``.
        labels: ``[n]`` visible labels (−1 = unlabeled).
        gamma: propagation weight.
        part_size: core nodes per part.
        local_factor: a local system holds about ``local_factor × part_size`` nodes (:func:`local_nodes`;
            larger: closer to the exact solve, costlier).
    """
    if local_factor < 1:
        raise ValueError(f"local_factor must be >= 1 (a local system holds at least its part), got {local_factor}")
    n, k = neighbours.shape
    Q = sp.csr_matrix(Q)
    Q_t = sp.csr_matrix(Q.T)
    labels = torch.as_tensor(labels).long().cpu()
    part = graph_parts(Q, part_size, seed)
    forward = torch.empty(n, k, dtype=torch.float64)
    backward = torch.empty(n, k, dtype=torch.float64)
    diagonal = torch.empty(n, dtype=torch.float64)
    escape_a = torch.zeros(n, dtype=torch.float64)  # e_a in the system of a's part
    escape_j = torch.zeros(n, k, dtype=torch.float64)  # e_j of each neighbour, same system
    exits = np.zeros((n, int(part.max()) + 1))  # column p: part p's normalised exit distribution ē_p
    local = torch.full((n,), -1, dtype=torch.long)
    for p in range(int(part.max()) + 1):
        core = torch.nonzero(part == p).flatten()
        if not len(core):
            continue
        idx = local_nodes(Q_t, neighbours, core, round(local_factor * len(core)), gamma)
        local[idx] = torch.arange(len(idx))
        rows, cols, escape, exit_p = _local_solve(Q, idx, local[core], gamma)
        lj = local[neighbours[core]]  # [c, k]
        c = torch.arange(len(core)).unsqueeze(1)
        forward[core], backward[core] = rows[c, lj], cols[lj, c]
        diagonal[core] = rows[c.squeeze(1), local[core]]
        escape_a[core], escape_j[core] = escape[local[core]], escape[lj]
        exits[:, p] = exit_p
        local[idx] = -1
    _add_long_walks(Q, neighbours, gamma, part, exits, escape_a, escape_j, forward, backward, diagonal)
    rows = torch.arange(n).repeat_interleave(k)
    labeled_columns(Q, labels, rows, neighbours.reshape(-1), gamma, LABELED_TOL, forward.view(-1), backward.view(-1),
                    diagonal)
    return forward.reshape(-1), backward.reshape(-1), diagonal


def _local_solve(Q: sp.csr_matrix, idx: Tensor, core: Tensor, gamma: float) -> tuple[Tensor, Tensor, Tensor, np.ndarray]:
    """On the nodes ``idx`` (``core``: local positions of the part's core), with ``B_V = (1−γ)(I − γQ_VV)⁻¹``:
    the core's rows ``B_V[core, :]`` ``[c, m]``, its columns ``B_V[:, core]`` ``[m, c]``, each node's escape
    mass ``e = 1 − Σ_V B_V[i, ·]`` ``[m]`` and the part's exit distribution ``ē`` (``[n]``, sums to 1 or
    is 0): where the core's walks first leave V.

    One dense LU and two multi-column solves (LAPACK): a kNN graph's local systems fill in so much that
    a sparse LU is no cheaper, and its solves are far slower than BLAS-3 ones.
    """
    sub = Q[idx.numpy()]
    m, c = len(idx), len(core)
    A = torch.eye(m, dtype=torch.float64) - gamma * torch.from_numpy(sub[:, idx.numpy()].toarray())
    lu, pivots = torch.linalg.lu_factor(A)
    unit = torch.zeros(m, c + 1, dtype=torch.float64)
    unit[core, torch.arange(c)] = 1.0
    unit[core, c] = 1.0  # the core's rows summed: where its walks go
    rows = torch.linalg.lu_solve(lu, pivots, unit, adjoint=True)  # (I−γQ_VV)⁻ᵀ e_a: row a of the inverse
    unit[:, c] = 1.0  # row sums of the inverse: the mass that stays in V
    cols = torch.linalg.lu_solve(lu, pivots, unit)
    escape = (1.0 - (1.0 - gamma) * cols[:, c]).clamp_min_(0.0)
    # E[a, o] = Σ_i G[a, i] γ Q[i, o] for o outside V, G = B_V / (1−γ): summed over the core's rows
    exit_p = np.asarray(sub.T @ (gamma * rows[:, c].numpy())).ravel()
    exit_p[idx.numpy()] = 0.0
    total = exit_p.sum()
    return ((1.0 - gamma) * rows[:, :c]).T, (1.0 - gamma) * cols[:, :c], escape, exit_p / total if total > 0 else exit_p


def _add_long_walks(Q, neighbours, gamma, part, exits, escape_a, escape_j, forward, backward, diagonal) -> None:
    """Add the walks that leave V, in place: ``B[a, j] ≈ B_V[a, j] + e_a ρ_p[j]``, ``ρ_p = ē_pᵀ B``.

    Exact is ``B[a, j] = B_V[a, j] + Σ_o E[a, o] B[o, j]`` (first exit at o, then anything); replacing
    each anchor's exit distribution ``E[a, ·]`` by ``e_a ē_p`` (its mass times its part's average)
    leaves one global solve per part, ``ρ_p = (1−γ)(I − γQᵀ)⁻¹ ē_p``, all parts as one block.
    """
    rho, _ = krylov_solve(sp.csr_matrix(Q.T), exits, gamma, tol=LABELED_TOL)
    rho = rho.cpu()
    a = torch.arange(len(part))
    forward += escape_a[:, None] * rho[neighbours, part[:, None]]
    backward += escape_j * rho[a, part][:, None]
    diagonal += escape_a * rho[a, part]
