"""PLM's piecewise-linear pieces: each anchor's greedy neighbour subset ``X_i`` and its m-dim PCA basis
``U_i`` (seed 003, Sec. 3.2; spec PLM.md §3).

The selection is batched over anchors and loops only over the k candidates; no gradients flow
through the pieces. The similarities built on them are in :mod:`dmlkit.targets.manifold`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ERROR_DEFS = ("absolute", "point_norm", "literal", "energy")
CHECKS = ("all", "previous")
CENTERS = ("mean", "anchor", "none")
EIG_FLOOR = 1e-10  # spec §3 step 3: directions with eigenvalue below this become zero columns


@dataclass
class Pieces:
    """The piecewise-linear manifold of a set of points.

    Attributes:
        points: ``[B, D]`` the anchors ``x_i``.
        bases: ``[B, D, m]`` orthonormal bases ``U_i`` (zero columns where the selected set is degenerate).
        neighbours: ``[B, k]`` the candidates ``N_1..N_k`` of each anchor (indices into the candidate set,
            ascending distance).
        selected: ``[B, k]`` bool, whether candidate ``N_t`` belongs to ``X_i`` (the anchor always does).
        radius: ``[B]`` distance from ``x_i`` to its farthest selected neighbour (0 if none).
    """

    points: Tensor
    bases: Tensor
    neighbours: Tensor
    selected: Tensor
    radius: Tensor

    def members(self, n: int | None = None) -> Tensor:
        """``[B, n]`` bool membership matrix: ``[i, j]`` iff point j is in ``X_i`` (i itself included)."""
        b = self.points.shape[0]
        n = b if n is None else n
        out = torch.zeros(b, n, dtype=torch.bool, device=self.points.device)
        out.scatter_(1, self.neighbours, self.selected)
        if n == b:
            out.fill_diagonal_(True)
        return out


def _check_options(m: int, threshold: float, error_def: str, check: str, center: str) -> None:
    if m < 1:
        raise ValueError(f"piece dimension m must be >= 1, got {m}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold T is a fraction in [0, 1] (0.9 for 90%), got {threshold}")
    for name, value, allowed in (
        ("error_def", error_def, ERROR_DEFS),
        ("check", check, CHECKS),
        ("center", center, CENTERS),
    ):
        if value not in allowed:
            raise ValueError(f"{name}='{value}' is not one of {', '.join(allowed)}")


def _centred_gram(gram: Tensor, mask: Tensor, center: str) -> Tensor:
    """``G = C Cᵀ`` ``[B, S, S]`` of the masked, centred rows ``C = M ⊙ (N - mu)``, from the raw Gram
    ``K = N Nᵀ``: ``G_jl = w_j w_l (K_jl - a_j - a_l + b)`` with ``a_j = n_jᵀ mu``, ``b = muᵀ mu``
    (no D-dimensional work inside the selection loop)."""
    w = mask.to(gram.dtype)
    if center == "mean":
        count = w.sum(1, keepdim=True).clamp_min(1.0)
        a = (gram @ w.unsqueeze(-1)).squeeze(-1) / count
        b = (a * w).sum(1, keepdim=True) / count
    elif center == "anchor":
        a, b = gram[:, :, 0], gram[:, :1, 0]
    else:
        a, b = torch.zeros_like(w), torch.zeros_like(w[:, :1])
    centred = gram - a.unsqueeze(1) - a.unsqueeze(2) + b.unsqueeze(-1)
    return centred * w.unsqueeze(1) * w.unsqueeze(2)


def _centre(points: Tensor, mask: Tensor, center: str) -> Tensor:
    """The centre ``mu`` ``[B, 1, D]`` of the masked rows."""
    if center == "mean":
        w = mask.to(points.dtype).unsqueeze(-1)
        return (points * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
    if center == "anchor":
        return points[:, :1]
    return torch.zeros_like(points[:, :1])


def _top_eig(gram: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Top-m eigenpairs (descending) of ``[B, S, S]``: ``(lam [B, m], E [B, S, m])``."""
    lam, vec = torch.linalg.eigh(gram)
    m = min(m, lam.shape[-1])
    return lam.flip(-1)[:, :m].clamp_min(0.0), vec.flip(-1)[:, :, :m]


def _passes(
    sq_point_norm: Tensor, gram: Tensor, lam: Tensor, vec: Tensor, threshold: float, error_def: str
) -> Tensor:
    """Whether each row passes the reconstruction test ``[B, S]`` (Sec. 3.2 step 3, spec §3)."""
    sq_norm = torch.diagonal(gram, dim1=1, dim2=2)
    residual_sq = (sq_norm - (lam.unsqueeze(1) * vec.square()).sum(-1)).clamp_min(0.0)
    error = residual_sq.sqrt()
    tol = 1.0 - threshold
    if error_def == "absolute":
        return error <= tol
    if error_def == "point_norm":
        return error / sq_point_norm.sqrt().clamp_min(1e-12) <= tol
    if error_def == "literal":
        return error < threshold
    return residual_sq <= tol * sq_norm  # "energy": ||(I-UUᵀ)(x-mu)||² / ||x-mu||² <= 1-T


def _select(raw: Tensor, m: int, threshold: float, error_def: str, check: str, center: str) -> Tensor:
    """The greedy subset ``X_i`` ``[B, k+1]`` bool (column 0: the anchor) from the raw Gram ``[B, k+1, k+1]``
    of anchor and candidates (Sec. 3.2 steps 1-4)."""
    b, k = raw.shape[0], raw.shape[1] - 1
    sq_point_norm = torch.diagonal(raw, dim1=1, dim2=2)
    mask = torch.zeros(b, k + 1, dtype=torch.bool, device=raw.device)
    mask[:, : min(m, k + 1)] = True
    for t in range(m, k + 1):
        trial = mask.clone()
        trial[:, t] = True
        gram = _centred_gram(raw, trial, center)
        lam, vec = _top_eig(gram, m)
        ok = _passes(sq_point_norm, gram, lam, vec, threshold, error_def)
        checked = trial if check == "all" else mask
        mask[:, t] = (ok | ~checked).all(1)
    return mask


def fit_pieces(
    anchors: Tensor,
    candidates: Tensor,
    m: int = 3,
    threshold: float = 0.9,
    selection: bool = True,
    error_def: str = "absolute",
    check: str = "all",
    center: str = "mean",
) -> tuple[Tensor, Tensor]:
    """Grow each anchor's subset ``X_i`` over its candidates and fit its m-dim PCA piece (Sec. 3.2).

    Step 1: ``X_i = {x_i, N_1..N_{m-1}}``. Step 2-4: for t = m..k add ``N_t`` iff the m-dim PCA of
    ``X_i ∪ {N_t}`` reconstructs every checked point with error at most 1 - T; a rejected candidate is
    skipped, not a stopping rule. Batched over anchors; the only loop is over t.

    Args:
        anchors: ``[B, D]`` the points ``x_i``.
        candidates: ``[B, k, D]`` their neighbours ``N_1..N_k`` in ascending distance.
        m: piece dimension.
        threshold: reconstruction quality T (0.9 = 90%).
        selection: False for ablation (1) of Table 3: ``X_i`` = the anchor and all k neighbours.
        error_def, check, center: the open choices of spec §3 (defaults: absolute residual, check every
            point of ``X'``, centre at the mean).

    Returns:
        ``(bases [B, D, m], selected [B, k] bool)``; bases are orthonormal columns, or zero columns where
        the eigenvalue is below 1e-10.
    """
    _check_options(m, threshold, error_def, check, center)
    if (
        anchors.ndim != 2
        or candidates.ndim != 3
        or candidates.shape[0] != anchors.shape[0]
        or candidates.shape[2] != anchors.shape[1]
    ):
        raise ValueError(
            f"anchors must be [B, D] and candidates [B, k, D]; got {tuple(anchors.shape)} and {tuple(candidates.shape)}"
        )
    b, _, d = candidates.shape
    points = torch.cat([anchors.unsqueeze(1), candidates], 1).detach().double()
    raw = points @ points.transpose(1, 2)  # K = N Nᵀ, [B, k+1, k+1]
    if selection:
        mask = _select(raw, m, threshold, error_def, check, center)
    else:  # ablation (1): the anchor and all k neighbours
        mask = torch.ones_like(raw[:, 0], dtype=torch.bool)
    lam, vec = _top_eig(_centred_gram(raw, mask, center), m)
    keep = lam > EIG_FLOOR
    scale = torch.where(keep, lam.clamp_min(EIG_FLOOR).rsqrt(), torch.zeros_like(lam))
    centred = (points - _centre(points, mask, center)) * mask.to(points.dtype).unsqueeze(-1)
    bases = centred.transpose(1, 2) @ (vec * scale.unsqueeze(1))  # U = Cᵀ E Λ^{-1/2}
    if bases.shape[-1] < m:
        bases = torch.cat([bases, bases.new_zeros(b, d, m - bases.shape[-1])], -1)
    return bases.to(anchors.dtype), mask[:, 1:]


def batch_pieces(
    x: Tensor,
    m: int = 3,
    k: int = 10,
    threshold: float = 0.9,
    selection: bool = True,
    error_def: str = "absolute",
    check: str = "all",
    center: str = "mean",
) -> Pieces:
    """The piece of every point of a batch, from its k nearest *other* batch points (Sec. 3.2).

    Args:
        x: ``[B, D]`` momentum-encoder embeddings (unit norm in PLM).
        k: neighbours per anchor (clamped to B - 1).

    Returns:
        :class:`Pieces` with ``neighbours`` indexing the batch.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be [B, D] with B >= 2, got {tuple(x.shape)}")
    x = x.detach()
    k = min(k, x.shape[0] - 1)
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(float("inf"))
    near, neighbours = dist.topk(k, dim=1, largest=False)
    bases, selected = fit_pieces(x, x[neighbours], m, threshold, selection, error_def, check, center)
    radius = (near * selected).amax(1)
    return Pieces(x, bases, neighbours, selected, radius)
