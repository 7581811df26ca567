"""SSDML's propagation on large graphs by partitioned dense solves (``solver="partitioned"``).

Mining reads ``W*`` only on ``E ∪ Eᵀ`` (each anchor's kNN edges, both directions), but every one of
those entries depends on all n columns of ``B = (1−γ)(I−γQ)⁻¹`` (a walk with γ = 0.99 lasts 99 steps
on average), so an exact answer at n = 60,000 costs ~10¹² multiply-adds whatever the solver
(docs/speed.md). This solver trades exactness for locality, as overlapping domain decomposition does:

1. **Parts.** The nodes are split into ``⌈n / part_size⌉`` parts of nodes that random walks connect:
   k-means on 16 random signals smoothed by 8 steps of Q (nodes a few steps apart get alike
   coordinates), parts over ``2·part_size`` split again.
2. **Local solve.** Each part's core, plus its one-hop halo (the kNN neighbours of its core nodes) and
   every labeled node (their ±1 affinities seed the labeled columns, as in the seed's partitions), is
   solved densely: ``W*_V = (1−γ)(I − γQ_VV)⁻¹ W⁰_V``. Walks that leave V are absorbed (Dirichlet
   boundary), so ``B_V ≤ B`` entrywise and the short walks that decide most neighbourhood orders are
   exact.
3. **Read.** Forward ``W*[a, j]``, backward ``W*[j, a]`` (``j ∈ N_k(a)``) and the diagonal are read
   for the core nodes a of each part; every j is in V by the halo.

Cost: ``Σ_p 2·m_p³`` for the local inverses (m_p = core + halo + labeled, about 2-3× the core) and
O(m_p²) memory per part. With a single part (``n ≤ part_size``) this is the dense solve exactly.
Agreement with the dense solve on the mined triplets is measured, not certified
(``experiments/propagation_scaling.py``, rows ``partitioned``).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from dmlkit.kmeans import kmeans

SIGNALS, SMOOTHING_STEPS = 16, 8


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


def propagate_partitioned(
    Q: sp.spmatrix, neighbours: Tensor, labels: Tensor, gamma: float, part_size: int = 1500,
    dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu", seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(forward [n·k], backward [n·k], diagonal [n])`` of ``W*`` by partitioned dense solves (module doc).

    Args:
        Q: row-stochastic kNN matrix ``[n, n]``; ``neighbours``: long ``[n, k]``, row i = ``N_k(i)``.
        labels: ``[n]`` visible labels (−1 = unlabeled).
        gamma: propagation weight.
        part_size: core nodes per part (the local systems have about 2-3× as many nodes).
        dtype: of the local inverses (float32 halves their time; results then carry ~1e-7 relative error).
    """
    n, k = neighbours.shape
    Q = sp.csr_matrix(Q)
    labels = torch.as_tensor(labels).long().cpu()
    labeled = labels >= 0
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
        nodes = labeled.clone()
        nodes[core] = True
        nodes[neighbours[core].reshape(-1)] = True  # the one-hop halo: every N_k(a) of a core node
        idx = torch.nonzero(nodes).flatten()
        local[idx] = torch.arange(len(idx))
        w_star, escape, exit_p = _local_solve(Q, idx, local[core], labels[idx], gamma, dtype, device)
        la, lj = local[core].unsqueeze(1), local[neighbours[core]]
        forward[core], backward[core] = w_star[la, lj], w_star[lj, la]
        diagonal[core] = w_star[local[core], local[core]]
        escape_a[core], escape_j[core] = escape[local[core]], escape[lj]
        exits[:, p] = exit_p
        local[idx] = -1
    _add_long_walks(Q, neighbours, labels, gamma, part, exits, escape_a, escape_j, forward, backward, diagonal)
    return forward.reshape(-1), backward.reshape(-1), diagonal


def _local_solve(Q: sp.csr_matrix, idx: Tensor, core: Tensor, labels: Tensor, gamma: float, dtype: torch.dtype,
                 device: str | torch.device) -> tuple[Tensor, Tensor, np.ndarray]:
    """On the nodes ``idx`` (``core``: local positions of the part's core): ``W*_V = B_V W⁰_V`` float64
    ``[m, m]``, each node's escape mass ``e = 1 − Σ_V B_V[i, ·]`` ``[m]`` and the part's exit
    distribution ``ē`` (``[n]``, sums to 1 or is 0): where the core's walks first leave V.

    ``B_V = (1−γ)(I − γQ_VV)⁻¹``. ``W⁰_V`` is the identity except on the labeled block (±1), so
    ``W*_V = B_V`` on unlabeled columns and ``B_V[:, L] W⁰_LL`` on labeled ones.
    """
    rows = Q[idx.numpy()]
    m = len(idx)
    A = torch.eye(m, dtype=dtype, device=device)
    A -= gamma * torch.as_tensor(rows[:, idx.numpy()].toarray(), dtype=dtype, device=device)
    B = torch.linalg.inv(A).mul_(1.0 - gamma).double().cpu()
    escape = (1.0 - B.sum(1)).clamp_min_(0.0)
    # E[a, o] = Σ_i G[a, i] γ Q[i, o] for o outside V, G = B_V / (1−γ): summed over the core's rows
    exit_p = np.asarray(rows.T @ (B[core].sum(0).numpy() * gamma / (1.0 - gamma))).ravel()
    exit_p[idx.numpy()] = 0.0
    total = exit_p.sum()
    exit_p = exit_p / total if total > 0 else exit_p
    lab = torch.nonzero(labels >= 0).flatten()
    if len(lab):
        y = labels[lab]
        w0 = torch.where(y[:, None] == y[None, :], 1.0, -1.0).double()  # +1 on the diagonal too
        B[:, lab] = B[:, lab] @ w0
    return B, escape, exit_p


def _add_long_walks(Q, neighbours, labels, gamma, part, exits, escape_a, escape_j, forward, backward, diagonal):
    """Add the walks that leave V, in place: ``B[a, j] ≈ B_V[a, j] + e_a ρ_p[j]``, ``ρ_p = ē_pᵀ B``.

    Exact is ``B[a, j] = B_V[a, j] + Σ_o E[a, o] B[o, j]`` (first exit at o, then anything); replacing
    each anchor's exit distribution ``E[a, ·]`` by ``e_a ē_p`` (its mass times its part's average)
    leaves one global solve per part, ``ρ_p = (1−γ)(I − γQᵀ)⁻¹ ē_p``, all parts as one block.
    Labeled columns take ``ρ_p W⁰`` in place of ``ρ_p``.
    """
    from dmlkit.targets.propagation_solvers import krylov_solve

    rho, _ = krylov_solve(sp.csr_matrix(Q.T), exits, gamma, tol=1e-12)
    rho = rho.cpu()
    lab = torch.nonzero(labels >= 0).flatten()
    if len(lab):
        y = labels[lab]
        rho[lab] = torch.where(y[:, None] == y[None, :], 1.0, -1.0).double() @ rho[lab]  # (ρ W⁰)[l] per part
    n = len(part)
    a = torch.arange(n)
    forward += escape_a[:, None] * rho[neighbours, part[:, None]]
    backward += escape_j * rho[a, part][:, None]
    diagonal += escape_a * rho[a, part]
