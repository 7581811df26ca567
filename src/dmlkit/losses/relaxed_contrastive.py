"""STML's losses: relaxed contrastive loss on row-mean-normalised distances and self-distillation.

Kim et al., "Self-Taught Metric Learning without Labels", CVPR 2022, Sec. 3.3–3.4 (spec STML.md §5).
For embeddings e_i (i = 1..n) of one batch:

    d_ij = ||e_i - e_j||,      d̃_ij = d_ij / ((1/n) Σ_l d_il)      (row mean includes d_ii = 0; not symmetric)

    L_RC(e; w) = 1/Z Σ_{i≠j} [ w_ij d̃_ij² + (1 - w_ij) [δ - d̃_ij]_+² ]          (Eq. 6), Z = n(n-1) or n

    L_KL = (1/n) Σ_i Σ_j p_ij (log p_ij - log q_ij),
           p_i = softmax_j(-d̃^g_ij / T) with g detached,  q_i = softmax_j(-d̃^f_ij / T)   (Eq. 7, ×T²)

Gradients flow through the row mean. Distances use a safe square root: zero distances (the diagonal,
coinciding points) have value 0 and gradient 0 instead of NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.targets.contextual import squared_distances

NORMALISERS = ("n(n-1)", "n")
_TINY = 1e-12


def pairwise_distances(embeddings: Tensor) -> Tensor:
    """Euclidean distances ``[n, n]`` of the rows of ``embeddings [n, d]``; 0 (with zero gradient) where 0."""
    sq = squared_distances(embeddings)
    positive = sq > _TINY
    return torch.where(positive, sq.clamp_min(_TINY).sqrt(), torch.zeros_like(sq))


def normalised_distances(embeddings: Tensor, normalize: bool = False) -> Tensor:
    """d̃ ``[n, n]``: distances divided by their row mean (diagonal included); grad through the mean.
    Scale-free, unlike the unit-sphere :func:`dmlkit.losses.supervised.unit_sphere_distances` used for mining.

    ``normalize`` L2-normalises the rows first (STML ``student_norm``, default off).
    """
    if embeddings.dim() != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embeddings must be [n, d] with n >= 2, got shape {tuple(embeddings.shape)}")
    if normalize:
        embeddings = F.normalize(embeddings, dim=1)
    d = pairwise_distances(embeddings)
    return d / d.mean(dim=1, keepdim=True).clamp_min(_TINY)


def relaxed_contrastive_from_distances(
    dist: Tensor, W: Tensor, delta: float = 1.0, normaliser: str = "n(n-1)"
) -> Tensor:
    """Eq. 6 on precomputed normalised distances ``dist [n, n]`` and pseudo labels ``W [n, n]`` in [0, 1]."""
    if W.shape != dist.shape:
        raise ValueError(f"W must match the distance matrix: W is {tuple(W.shape)}, distances {tuple(dist.shape)}")
    if normaliser not in NORMALISERS:
        raise ValueError(f"normaliser must be one of {NORMALISERS}, got '{normaliser}'")
    n = dist.shape[0]
    off_diagonal = 1.0 - torch.eye(n, dtype=dist.dtype, device=dist.device)
    W = W.detach()
    pull = W * dist.pow(2)
    push = (1.0 - W) * torch.relu(delta - dist).pow(2)
    total = ((pull + push) * off_diagonal).sum()
    return total / (n * (n - 1) if normaliser == "n(n-1)" else n)


def relaxed_contrastive_loss(
    embeddings: Tensor, W: Tensor, delta: float = 1.0, normaliser: str = "n(n-1)", normalize: bool = False
) -> Tensor:
    """Relaxed contrastive loss (Eq. 6) of ``embeddings [n, d]`` against soft labels ``W [n, n]``.

    Args:
        embeddings: raw student embeddings (f or g).
        W: pseudo labels (no gradient flows into them); the diagonal is ignored.
        delta: margin δ on normalised distances (1 for CUB/Cars, 0.9 for SOP).
        normaliser: ``"n(n-1)"`` (official STML code) or ``"n"`` (the original relaxed contrastive loss).
        normalize: L2-normalise the embeddings first (``student_norm``).

    Returns:
        scalar loss; invariant to scaling the embeddings.
    """
    return relaxed_contrastive_from_distances(normalised_distances(embeddings, normalize), W, delta, normaliser)


def kl_from_distances(dist_f: Tensor, dist_g: Tensor, temperature: float = 1.0) -> Tensor:
    """Eq. 7 on normalised distances: KL(softmax(-d̃^g/T) || softmax(-d̃^f/T)) averaged over rows, × T².

    ``dist_g`` is detached (stop-gradient); the softmax runs over every column, the diagonal included.
    """
    if dist_f.shape != dist_g.shape:
        raise ValueError(f"f and g distance matrices differ in shape: {tuple(dist_f.shape)} vs {tuple(dist_g.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_q = F.log_softmax(-dist_f / temperature, dim=1)
    log_p = F.log_softmax(-dist_g.detach() / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum()
    return kl * temperature**2 / dist_f.shape[0]


def self_distillation_kl(f: Tensor, g: Tensor, temperature: float = 1.0, normalize: bool = False) -> Tensor:
    """Self-distillation (Eq. 7): the f head's neighbourhood distribution follows g's (g detached).

    Args:
        f: ``[n, d_f]`` target-head embeddings (receive the gradient).
        g: ``[n, d_g]`` auxiliary-head embeddings of the same rows (stop-gradient).
        temperature: softmax temperature T (paper: 1); the loss is multiplied by T².
        normalize: L2-normalise both first (``student_norm``).
    """
    if f.shape[0] != g.shape[0]:
        raise ValueError(f"f and g must have the same rows, got {f.shape[0]} and {g.shape[0]}")
    return kl_from_distances(normalised_distances(f, normalize), normalised_distances(g.detach(), normalize), temperature)


__all__ = [
    "NORMALISERS",
    "kl_from_distances",
    "normalised_distances",
    "pairwise_distances",
    "relaxed_contrastive_from_distances",
    "relaxed_contrastive_loss",
    "self_distillation_kl",
]
