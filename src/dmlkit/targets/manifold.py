"""PLM's piecewise-linear manifold and its similarity (seed 003, Secs. 3.2, 3.3 and 3.5; spec PLM.md §3-4).

Every point ``x_i`` of a batch of momentum-encoder embeddings gets an m-dimensional linear piece
``P_i`` (basis ``U_i``, D x m) fitted by PCA to a subset ``X_i`` of its k nearest batch points,
grown greedily under a reconstruction threshold T (Sec. 3.2). The similarity of a point to a piece
decays with the orthogonal distance ``o`` and the in-piece distance ``p`` (Eqs. 2-4) and is
symmetrised over the two pieces (Eq. 5). Proxies ``(rho_j, Psi_j)`` play the role of pieces (Sec. 3.5).

Everything here runs without gradients on the pieces. The pieces themselves (:class:`Pieces`,
:func:`fit_pieces`, :func:`batch_pieces`) live in :mod:`dmlkit.targets.manifold_pieces` and are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dmlkit.targets.manifold_pieces import Pieces, batch_pieces, fit_pieces


def _safe_sqrt(v: Tensor) -> Tensor:
    return v.clamp_min(1e-24).sqrt()


def piece_distances(x: Tensor, centres: Tensor, bases: Tensor) -> tuple[Tensor, Tensor]:
    """Orthogonal and in-piece distances of points to pieces (Sec. 3.3).

    With ``Δ = x_i - c_j``: ``p_ij = ||U_jᵀ Δ||`` and ``o_ij = ||Δ - U_j U_jᵀ Δ|| = sqrt(max(||Δ||² - p², 0))``.

    Args:
        x: ``[A, D]`` points. centres: ``[P, D]`` piece anchors. bases: ``[P, D, m]`` orthonormal (or zero) columns.

    Returns:
        ``(o [A, P], p [A, P])`` in the input dtype. Computed in float64 through the expansion
        ``||Δ||² = ||x||² + ||c||² - 2 xᵀc`` (never an A x P x D tensor), so that the cancellation in
        ``||Δ||² - p²`` stays below 1e-7 for unit-norm embeddings.
    """
    x64, c64, u64 = x.double(), centres.double(), bases.double()
    proj = torch.einsum("ad,pdm->apm", x64, u64) - torch.einsum("pd,pdm->pm", c64, u64).unsqueeze(0)
    p_sq = proj.square().sum(-1)
    delta_sq = (x64.square().sum(1, keepdim=True) + c64.square().sum(1) - 2.0 * x64 @ c64.T).clamp_min(0.0)
    return _safe_sqrt(delta_sq - p_sq).to(x.dtype), _safe_sqrt(p_sq).to(x.dtype)


def directed_similarity(o: Tensor, p: Tensor, n_alpha: float = 4.0, n_beta: float = 0.5) -> Tensor:
    """``s' = α β`` with ``α = (1 + o/2)^{-N_α}`` (Eq. 3) and ``β = (1 + p)^{-N_β}`` (Eq. 4); Eq. 2."""
    return (1.0 + o / 2.0).pow(-n_alpha) * (1.0 + p).pow(-n_beta)


def in_piece(x: Tensor, centres: Tensor, bases: Tensor, radius: Tensor, threshold: float = 0.9) -> Tensor:
    """``[A, P]`` bool: point i lies in piece j's neighbourhood, i.e. within its radius and with orthogonal
    distance at most 1 - T (the binary-similarity ablation, Appendix A (2), for pieces without a member list)."""
    o, _ = piece_distances(x, centres, bases)
    return (torch.cdist(x, centres) <= radius.unsqueeze(0) + 1e-12) & (o <= 1.0 - threshold)


def point_similarity(
    pieces: Pieces,
    n_alpha: float = 4.0,
    n_beta: float = 0.5,
    binary: bool = False,
    same_image: Tensor | None = None,
) -> Tensor:
    """Point-point similarity ``s_ij = (s'(x_i, x_j) + s'(x_j, x_i)) / 2`` (Eq. 5), ``[B, B]``, symmetric, in (0, 1].

    ``s'(x_i, x_j)`` reads ``(o, p)`` of ``x_i`` off ``P_j``.

    Args:
        binary: ablation (2) of Table 3: ``s'(x_i, x_j) = 1[x_i ∈ X_j]`` instead of Eqs. 2-4.
        same_image: optional ``[B]`` image ids; pairs of views of one image get s = 1 (spec §4 option).
    """
    if binary:
        directed = pieces.members().T.to(pieces.points.dtype)
    else:
        o, p = piece_distances(pieces.points, pieces.points, pieces.bases)
        directed = directed_similarity(o, p, n_alpha, n_beta)
    s = 0.5 * (directed + directed.T)
    if same_image is not None:
        s = torch.where(same_image.unsqueeze(0) == same_image.unsqueeze(1), torch.ones_like(s), s)
    return s


def proxy_similarity(
    pieces: Pieces,
    proxies: Tensor,
    proxy_bases: Tensor,
    n_alpha: float = 4.0,
    n_beta: float = 0.5,
    binary: bool = False,
    threshold: float = 0.9,
) -> Tensor:
    """Proxy-point similarity ``s(x_i, rho_j)`` (Sec. 3.5): Eq. 5 with ``(rho_j, Psi_j)`` as the piece of the
    proxy in one direction and ``P_i`` in the other; ``[B, N_rho]``. Differentiable in ``proxies`` and
    ``proxy_bases``.

    Args:
        proxies: ``[N_rho, D]`` proxy locations (already normalised if the method normalises them).
        proxy_bases: ``[N_rho, D, m]`` orthonormal bases ``Psi_j``.
        binary: ablation (2): each direction is 1 iff the point lies in the other's piece neighbourhood
            (within its radius, orthogonal distance <= 1 - T); a proxy's radius is the distance to its
            k-th nearest batch point, k = the pieces' neighbour count.
    """
    x = pieces.points
    if binary:
        k = pieces.neighbours.shape[1]
        proxy_radius = torch.cdist(proxies.detach(), x).kthvalue(min(k, x.shape[0]), dim=1).values
        to_proxy = in_piece(x, proxies.detach(), proxy_bases.detach(), proxy_radius, threshold).to(x.dtype)
        to_point = in_piece(proxies.detach(), x, pieces.bases, pieces.radius, threshold).T.to(x.dtype)
        return 0.5 * (to_proxy + to_point)
    o, p = piece_distances(x, proxies, proxy_bases)
    to_proxy = directed_similarity(o, p, n_alpha, n_beta)  # s'(x_i, rho_j): piece Psi_j
    o, p = piece_distances(proxies, x, pieces.bases)
    to_point = directed_similarity(o, p, n_alpha, n_beta).T  # s'(rho_j, x_i): piece P_i
    return 0.5 * (to_proxy + to_point)


def basis_angle_cosine(bases: Tensor, proxy_bases: Tensor, squared: bool = False) -> Tensor:
    """``cos θ_{k,j,i} = ||U_iᵀ ψ_{k,j}||`` between proxy direction ``ψ_{k,j}`` and piece ``P_i`` (Eq. 8),
    computed as ``sqrt(||U_iᵀ ψ||² + 1e-12)`` (differentiable at 0); ``squared`` gives ``||U_iᵀ ψ||²``.

    Args:
        bases: ``[B, D, m]`` piece bases. proxy_bases: ``[N_rho, D, m]``.

    Returns:
        ``[B, N_rho, m]``.
    """
    sq = torch.einsum("bdr,jdk->bjkr", bases, proxy_bases).square().sum(-1)
    return sq if squared else (sq + 1e-12).sqrt()


def manifold_estimate(
    embeddings: Tensor,
    k: int = 10,
    m: int = 3,
    threshold: float = 0.9,
    n_alpha: float = 4.0,
    n_beta: float = 0.5,
    selection: bool = True,
    binary: bool = False,
    error_def: str = "absolute",
    check: str = "all",
    center: str = "mean",
) -> dict[str, Tensor]:
    """PLM's pseudo-supervision of a batch-sized set, in the form
    :func:`dmlkit.evaluation.quality.quality_table` reads (Table 2).

    Args:
        embeddings: ``[b, D]``; L2-normalised here, as PLM's momentum encoder outputs are.

    Returns:
        ``{"groups": [b, k+1] long (row i = i then its selected neighbours X_i, -1 padded),
        "similarity": [b, b] Eq. 5 (or the binary ablation)}``.
    """
    x = torch.nn.functional.normalize(embeddings.detach().float(), dim=1)
    pieces = batch_pieces(x, m, k, threshold, selection, error_def, check, center)
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    groups = torch.cat(
        [rows, torch.where(pieces.selected, pieces.neighbours, torch.full_like(pieces.neighbours, -1))], 1
    )
    return {"groups": groups, "similarity": point_similarity(pieces, n_alpha, n_beta, binary)}


@dataclass
class ManifoldSupervision:
    """PLM's pseudo-supervision over a whole set (Table 2): overlapping groups and a pairwise similarity.

    Attributes:
        groups: ``[N, k+1]`` long, row i = i then its selected neighbours, padded with -1.
        similarity_rows: ``rows -> [len(rows), N]`` Eq. 5 similarity of the given rows to every point,
            so that the full N x N matrix is never held.
    """

    groups: Tensor
    similarity_rows: Callable[[Tensor], Tensor]

    @property
    def mean_group_size(self) -> float:
        return float((self.groups >= 0).sum(1).double().mean())


def manifold_supervision(
    embeddings: Tensor,
    k: int = 10,
    m: int = 3,
    threshold: float = 0.9,
    n_alpha: float = 4.0,
    n_beta: float = 0.5,
    selection: bool = True,
    error_def: str = "absolute",
    check: str = "all",
    center: str = "mean",
    chunk: int = 4096,
) -> ManifoldSupervision:
    """PLM's pieces (pseudo groups) and Eq. 5 similarity for a set of embeddings (Sec. 4.3, Table 2).

    Pieces are built from each point's k nearest neighbours in the whole set (spec §8 default), in
    chunks of anchors; embeddings are L2-normalised as PLM's momentum encoder outputs are.

    Args:
        embeddings: ``[N, D]``.

    Returns:
        :class:`ManifoldSupervision`.
    """
    from dmlkit.evaluation.knn import knn_search

    x = torch.nn.functional.normalize(embeddings.detach().float(), dim=1)
    n = x.shape[0]
    k = min(k, n - 1)
    _, neighbours = knn_search(x, k, exclude_self=True)
    neighbours = torch.as_tensor(neighbours, dtype=torch.long)
    bases = x.new_zeros(n, x.shape[1], m)
    selected = torch.zeros(n, k, dtype=torch.bool)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        bases[rows], selected[rows] = fit_pieces(
            x[rows], x[neighbours[rows]], m, threshold, selection, error_def, check, center
        )
    groups = torch.cat(
        [torch.arange(n).unsqueeze(1), torch.where(selected, neighbours, torch.full_like(neighbours, -1))], 1
    )

    def similarity_rows(rows: Tensor) -> Tensor:
        rows = torch.as_tensor(rows, dtype=torch.long)
        o, p = piece_distances(x[rows], x, bases)
        forward = directed_similarity(o, p, n_alpha, n_beta)
        o, p = piece_distances(x, x[rows], bases[rows])
        return 0.5 * (forward + directed_similarity(o, p, n_alpha, n_beta).T)

    return ManifoldSupervision(groups, similarity_rows)
