"""STML's contextualized semantic similarity: soft pseudo labels for every pair of a mini-batch.

Kim et al., "Self-Taught Metric Learning without Labels", CVPR 2022, Sec. 3.2 (spec STML.md §4).
From the teacher embeddings t_i (i = 1..n) of one batch:

1. pairwise similarity      w^P_ij = exp(-||t̄_i - t̄_j||² / σ),  t̄ = t / ||t||             (Eq. 2)
2. ranking matrix            w̃^P_ij = 1 if idx(i) = idx(j) else w^P_ij   (ranking only)
3. k-reciprocal neighbours   A_ij = [j ∈ top-k of row i of w̃^P],  V = A ⊙ Aᵀ,  R_k(i) = {j : V_ij = 1}
4. contextual similarity     w̃^C_ij = |R_k(i) ∩ R_k(j)| / |R_k(i)| for j ∈ R_k(i), else 0       (Eq. 3)
5. query expansion           ŵ^C_ij = mean_{q ∈ N_{k/2}(i)} w̃^C_qj  over the top round(k/2) of row i   (Eq. 4)
6. combine                   w^C = (ŵ^C + ŵ^Cᵀ)/2,  w = (w^P + w^C)/2                              (Eq. 5)

Vectorised (normative form of the spec): ``W̃^C = (V ⊙ VV) ⊘ (V1)`` row-wise and ``Ŵ^C = H W̃^C / |N|``
with H the 0/1 indicator of the query-expansion neighbours. No Python loop over rows.

Tie-breaking in the top-k (spec §4 open choice): ``"stable_index"`` (default) orders every row by
(-value, column index) with the row itself first, so that among equal similarities — the forced 1s of
same-index pairs, or exact duplicates — the lower column wins. Ranking the row itself first keeps
i ∈ R_k(i) and i ∈ N_{k/2}(i) (which the spec states) even when more than k rows share an image index
(duplicates across NN groups); a plain (-value, column) order would break that.

``"torch_topk"`` calls ``torch.topk`` on the same ranking matrix (the row itself at 2, the other rows
of its image at 1). What it guarantees: the row itself comes first (2 is the row's unique maximum), so
i ∈ R_k(i) and i ∈ N_{k/2}(i); the columns it returns hold the row's largest values in non-increasing
order (no column left out has a larger value than one taken); on rows whose entries other than the
diagonal are pairwise distinct it returns exactly what ``"stable_index"`` returns. What it does not
guarantee: which of several equal entries is taken when they straddle the k-th (or the round(k/2)-th)
place, nor their order. PyTorch leaves that to the kernel: it can differ between CPU and CUDA,
between versions, and from the official code, which runs ``torch.topk`` on a matrix whose diagonal is
1 like the other same-index entries (tjddus9597/STML-CVPR22 ``code/loss.py`` L59-61). It is not a
bit-exact transcription of the official top-k; the choice changes N_k only when entries tie.

Query expansion divides by the number of expansion neighbours ``qe_size`` (numpy's round-half-even of
k/2, the official code's ``mean``); the spec's ``2/k`` is the same number for even k (the default).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

TIE_BREAKS = ("stable_index", "torch_topk")


@dataclass
class ContextualSimilarity:
    """Every intermediate of the contextualized semantic similarity of one batch (all ``[n, n]``).

    Attributes:
        W: the final pseudo labels w = (w^P + w^C)/2, symmetric, in [exp(-4/σ)/2, 1] (normalised teacher).
        pairwise: w^P, the Gaussian similarity of the normalised teacher embeddings.
        contextual: w^C, the symmetrised query-expanded contextual similarity.
        reciprocal: V as 0/1 floats; V_ij = 1 iff j ∈ R_k(i) (always includes i).
        expansion: H as 0/1 floats; H_iq = 1 iff q ∈ N_{k/2}(i) (always includes i).
        k: the neighbourhood size used.
        qe_size: the number of query-expansion neighbours used.
    """

    W: Tensor
    pairwise: Tensor
    contextual: Tensor
    reciprocal: Tensor
    expansion: Tensor
    k: int
    qe_size: int


def default_qe_size(k: int) -> int:
    """round_half_even(k/2), as numpy's ``np.around`` in the official code (k=10 -> 5, k=5 -> 2)."""
    return int(np.around(k / 2))


def squared_distances(x: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances ``[n, n]`` of the rows of ``x [n, d]``, >= 0, zero diagonal.

    Rows are centred first (distances are translation invariant) to reduce cancellation in the
    Gram form ``|a|² + |b|² - 2ab``.
    """
    x = x - x.mean(dim=0, keepdim=True)
    sq_norm = (x * x).sum(dim=1)
    sq = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    return sq * (1.0 - torch.eye(len(x), dtype=x.dtype, device=x.device))


def _check_inputs(embeddings: Tensor, indices: Tensor, k: int, qe_size: int, sigma: float, tie_break: str) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"teacher_embeddings must be [n, d], got shape {tuple(embeddings.shape)}")
    n = embeddings.shape[0]
    if indices.dim() != 1 or indices.shape[0] != n:
        raise ValueError(
            f"indices must be [n] with n = {n} (one image index per embedding row, repeated per view), "
            f"got shape {tuple(indices.shape)}"
        )
    if not 1 <= k <= n:
        raise ValueError(f"k = {k} must lie in [1, n] with n = {n} rows; lower num_neighbors or raise the batch size")
    if not 1 <= qe_size <= n:
        raise ValueError(f"qe_size = {qe_size} must lie in [1, n] with n = {n}; the usual value is round(k/2)")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got '{tie_break}'")


def _ranking(scores: Tensor, count: int, tie_break: str) -> Tensor:
    """Column indices ``[n, count]`` of the ``count`` largest entries of every row of ``scores``."""
    if tie_break == "stable_index":
        return torch.sort(-scores, dim=1, stable=True).indices[:, :count]
    return torch.topk(scores, count, dim=1).indices


@torch.no_grad()
def contextual_similarity_parts(
    teacher_embeddings: Tensor,
    indices: Tensor,
    k: int,
    sigma: float = 3.0,
    qe_size: int | None = None,
    normalize: bool = True,
    tie_break: str = "stable_index",
) -> ContextualSimilarity:
    """The contextualized semantic similarity of one batch, with its intermediates.

    Args:
        teacher_embeddings: ``[n, d]`` teacher outputs (all views of the batch).
        indices: ``[n]`` image index of every row; rows with the same index (the other view of an image,
            or a duplicate) are ranked first in every neighbourhood, right after the row itself.
        k: neighbourhood size of the k-reciprocal sets (STML: num_neighbors × views).
        sigma: bandwidth σ of the Gaussian pairwise similarity (paper: 3).
        qe_size: query-expansion neighbours; default round_half_even(k/2).
        normalize: L2-normalise the teacher embeddings first (STML ``teacher_norm``, default on).
        tie_break: ``"stable_index"`` or ``"torch_topk"`` (see the module docstring for what each
            guarantees among ties).

    Returns:
        :class:`ContextualSimilarity`; ``.W`` is the ``[n, n]`` pseudo-label matrix (no grad).
    """
    qe_size = default_qe_size(k) if qe_size is None else int(qe_size)
    _check_inputs(teacher_embeddings, indices, k, qe_size, sigma, tie_break)
    t = teacher_embeddings.detach()
    if normalize:
        t = F.normalize(t, dim=1)
    pairwise = torch.exp(-squared_distances(t) / sigma)  # Eq. 2

    ranking = pairwise.masked_fill(indices[:, None] == indices[None, :], 1.0)  # same image ranks first
    ranking.diagonal().fill_(2.0)  # and the row itself before any other view or duplicate
    order = _ranking(ranking, max(k, qe_size), tie_break)
    A = torch.zeros_like(pairwise).scatter_(1, order[:, :k], 1.0)
    V = A * A.T  # k-reciprocal: j ∈ top-k(i) and i ∈ top-k(j)

    # Eq. 3: (VV)_ij = |R(i) ∩ R(j)| because V is symmetric; keep j ∈ R(i), divide by |R(i)| (>= 1).
    context = V * (V @ V) / V.sum(dim=1, keepdim=True).clamp_min(1.0)
    H = torch.zeros_like(pairwise).scatter_(1, order[:, :qe_size], 1.0)
    expanded = (H @ context) / qe_size  # Eq. 4: query expansion
    contextual = 0.5 * (expanded + expanded.T)
    W = 0.5 * (pairwise + contextual)  # Eq. 5
    return ContextualSimilarity(W=W, pairwise=pairwise, contextual=contextual, reciprocal=V,
                                expansion=H, k=k, qe_size=qe_size)


@torch.no_grad()
def contextual_similarity(
    teacher_embeddings: Tensor,
    indices: Tensor,
    k: int,
    sigma: float = 3.0,
    qe_size: int | None = None,
    normalize: bool = True,
    tie_break: str = "stable_index",
) -> Tensor:
    """STML's pseudo labels ``W [n, n]`` = (w^P + w^C)/2 for one batch; see :func:`contextual_similarity_parts`."""
    return contextual_similarity_parts(teacher_embeddings, indices, k, sigma, qe_size, normalize, tie_break).W


__all__ = [
    "TIE_BREAKS",
    "ContextualSimilarity",
    "contextual_similarity",
    "contextual_similarity_parts",
    "default_qe_size",
    "squared_distances",
]
