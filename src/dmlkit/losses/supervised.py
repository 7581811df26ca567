"""Supervised base losses and their miners (spec DRML.md §3), shared by DRML and the ``supervised``
reference method.

Distances are Euclidean between L2-normalised vectors; similarities are cosine. The loss formulas are
pytorch-metric-learning's (``TripletMarginLoss``, ``MarginLoss``, ``ProxyAnchorLoss``, ``CosFaceLoss``),
which match GeDML's; the three GeDML miners DRML uses have no exact counterpart there and are written
here from their definitions:

* ``hard``: one random positive per anchor; the negative is the nearest one after distances are
  clamped from below at ``c = min(max d_pos, cutoff)`` (ties: the first index).
* ``semihard``: one random positive, then one random negative with ``d_ap < d_an < d_ap + margin``;
  anchors without such a negative are dropped.
* ``distance_weighted``: one random positive, and a negative drawn with probability ``∝ 1/q(d)``,
  ``log q(d) = (n-2) log d + (n-3)/2 log(1 - d²/4)``, ``d`` clamped at ``≥ cutoff``.

Every miner returns ``(anchors, positives, negatives)`` long tensors, one triplet per kept anchor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSS_ALIASES = {
    "triplet": "triplet", "tripletmarginloss": "triplet", "triplet_margin": "triplet",
    "margin": "margin", "marginloss": "margin",
    "proxy_anchor": "proxy_anchor", "proxyanchor": "proxy_anchor", "proxyanchorloss": "proxy_anchor",
    "cosface": "cosface", "cosfaceloss": "cosface",
}
MINERS = ("hard", "semihard", "distance_weighted", "none")
DEFAULT_MINER = {"triplet": "hard", "margin": "distance_weighted", "proxy_anchor": "none", "cosface": "none"}


def unit_sphere_distances(embeddings: Tensor) -> Tensor:
    """``[B, D] -> [B, B]`` Euclidean distances between the L2-normalised rows, ``√(2 − 2 cos)`` (no gradient;
    for mining). Not STML's scale-free :func:`dmlkit.losses.relaxed_contrastive.normalised_distances`."""
    with torch.no_grad():
        z = F.normalize(embeddings.float(), dim=-1)
        return (2.0 - 2.0 * z @ z.T).clamp_min(0.0).sqrt()


def _masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Positive mask (same label, self excluded) and negative mask (different label), ``[B, B]``."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _random_positive(pos: Tensor, rows: Tensor) -> Tensor:
    """One uniformly random positive for each anchor in ``rows`` (each must have one)."""
    if len(rows) == 0:
        return rows
    return torch.multinomial(pos[rows].float(), 1).squeeze(-1)


def _empty(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    e = torch.zeros(0, dtype=torch.long, device=device)
    return e, e, e


def hard_triplets(dist: Tensor, labels: Tensor, cutoff: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """GeDML's ``hard`` miner. ``dist [B, B]``, ``labels [B]``.

    Anchors need at least one positive and one negative (so a positive is never returned as the
    negative). The clamp ``c = min(max over positive pairs of d, cutoff)`` is one number per batch.
    """
    pos, neg = _masks(labels)
    rows = torch.nonzero(pos.any(1) & neg.any(1)).squeeze(-1)
    if len(rows) == 0:
        return _empty(dist.device)
    c = min(float(dist[pos].max()), cutoff)
    d = dist[rows].clamp_min(c).masked_fill(~neg[rows], math.inf)
    return rows, _random_positive(pos, rows), d.argmin(dim=1)  # argmin: first index among ties


def semihard_triplets(dist: Tensor, labels: Tensor, margin: float = 0.2) -> tuple[Tensor, Tensor, Tensor]:
    """GeDML's ``semihard`` miner: random positive, random negative with ``d_ap < d_an < d_ap + margin``."""
    pos, neg = _masks(labels)
    rows = torch.nonzero(pos.any(1)).squeeze(-1)
    if len(rows) == 0:
        return _empty(dist.device)
    p = _random_positive(pos, rows)
    d_ap = dist[rows, p].unsqueeze(1)
    d = dist[rows]
    band = neg[rows] & (d > d_ap) & (d < d_ap + margin)
    keep = band.any(1)
    if not keep.any():
        return _empty(dist.device)
    n = torch.multinomial(band[keep].float(), 1).squeeze(-1)
    return rows[keep], p[keep], n


def distance_weights(dist: Tensor, labels: Tensor, dim: int, cutoff: float = 0.5, mask_positives: bool = True) -> Tensor:
    """Unnormalised negative-sampling weights ``[B, B]`` of distance-weighted sampling (Wu et al. 2017).

    ``w_ij = 1/q(d_ij) = exp((2-n) log d - (n-3)/2 log(1 - d²/4))`` with ``n = dim`` and ``d`` clamped at
    ``cutoff``, scaled per row so that its largest finite weight is 1; NaN/Inf weights become 0.
    ``mask_positives=False`` reproduces GeDML, whose positives (self included) keep log-weight 0 and so
    a (tiny) chance of being drawn as the negative.
    """
    _, neg = _masks(labels)
    d = dist.clamp_min(cutoff).double()
    log_w = (2.0 - dim) * d.log() - ((dim - 3.0) / 2.0) * (1.0 - 0.25 * d * d).log()
    log_w = torch.where(neg, log_w, torch.zeros_like(log_w))
    bad = ~torch.isfinite(log_w)
    if mask_positives:
        bad = bad | ~neg
    log_w = log_w.masked_fill(bad, -math.inf)
    w = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values.nan_to_num(neginf=0.0))
    return w.nan_to_num(nan=0.0, posinf=0.0)


def distance_weighted_triplets(
    dist: Tensor, labels: Tensor, dim: int, cutoff: float = 0.5, mask_positives: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """GeDML's distance-weighted miner: a random positive and a negative drawn ``∝`` :func:`distance_weights`.
    Anchors without a positive or with all-zero weights are dropped."""
    pos, _ = _masks(labels)
    w = distance_weights(dist, labels, dim, cutoff, mask_positives)
    rows = torch.nonzero(pos.any(1) & (w.sum(1) > 0)).squeeze(-1)
    if len(rows) == 0:
        return _empty(dist.device)
    return rows, _random_positive(pos, rows), torch.multinomial(w[rows], 1).squeeze(-1)


class MetricLoss(nn.Module):
    """A base loss with its miner: ``forward(embeddings [B, D], labels [B]) -> scalar``.

    Its parameters (proxy table, class boundaries β) belong to this instance only; DRML builds K + 1
    instances. An empty or label-less batch returns an exact 0 that is still connected to those
    parameters (zero gradients), so the optimiser steps them as the official code does.
    """

    def __init__(self, name: str, loss: nn.Module, miner: str, embedding_dim: int, miner_kw: dict) -> None:
        super().__init__()
        self.name = name
        self.loss = loss
        self.miner = miner
        self.embedding_dim = embedding_dim
        self.miner_kw = miner_kw

    def mine(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The triplets this loss's miner picks from the batch."""
        dist = unit_sphere_distances(embeddings)
        if self.miner == "hard":
            return hard_triplets(dist, labels, **self.miner_kw)
        if self.miner == "semihard":
            return semihard_triplets(dist, labels, **self.miner_kw)
        return distance_weighted_triplets(dist, labels, **self.miner_kw)

    def zero(self, embeddings: Tensor) -> Tensor:
        out = embeddings.sum() * 0.0
        for p in self.parameters():
            out = out + p.sum() * 0.0
        return out

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"{self.name} loss expects embeddings [B, {self.embedding_dim}], got {list(embeddings.shape)}")
        if len(labels) == 0:
            return self.zero(embeddings)
        if self.miner == "none":
            return self.loss(embeddings, labels)
        triplets = self.mine(embeddings, labels)
        if len(triplets[0]) == 0:
            return self.zero(embeddings)
        return self.loss(embeddings, labels, triplets)


PROXY_INITS = ("kaiming_normal", "kaiming_normal_a5", "kaiming_uniform")


def _init_table(table: Tensor, init: str) -> None:
    """Initialise a ``[C, D]`` class table.

    ``kaiming_normal``: N(0, 2 / C) (fan_out = C); ``kaiming_normal_a5``: N(0, 1 / (3 D)), PyTorch's
    ``kaiming_normal_(a=√5)`` with fan_in = D (zbr17/DRML ``src/drml/collectors/multi_proxy_collector.py``
    L42, the branch tables); ``kaiming_uniform``: U(±1/√D), ``kaiming_uniform_(a=√5)``
    (``src/drml/collectors/proxy_collector.py`` L32, the final table).
    """
    if init == "kaiming_normal":
        nn.init.kaiming_normal_(table, mode="fan_out")
    elif init == "kaiming_normal_a5":
        nn.init.kaiming_normal_(table, a=math.sqrt(5))
    elif init == "kaiming_uniform":
        nn.init.kaiming_uniform_(table, a=math.sqrt(5))
    else:
        raise ValueError(f"proxy_init must be one of {PROXY_INITS}, got '{init}'")


def build_metric_loss(
    name: str,
    num_classes: int,
    embedding_dim: int,
    *,
    miner: str = "auto",
    triplet_margin: float = 1.0,
    semihard_margin: float = 0.2,
    hard_cutoff: float = 0.5,
    margin_alpha: float = 0.2,
    margin_beta0: float = 1.2,
    dw_dim: int | str = "auto",
    dw_mask_positives: bool = True,
    dw_cutoff: float = 0.5,
    pa_delta: float = 0.1,
    pa_alpha: float = 32.0,
    cosface_m: float = 0.35,
    cosface_s: float = 64.0,
    proxy_init: str = "kaiming_normal",
) -> MetricLoss:
    """A supervised base loss over ``embedding_dim``-d vectors of ``num_classes`` classes.

    Args:
        name: ``triplet`` (``[d_ap - d_an + m]_+`` averaged over non-zero terms), ``margin``
            (``[α + d_ap - β_y]_+ + [α - d_an + β_y]_+``, learnable β per class, sum over non-zero
            terms / their count), ``proxy_anchor`` (Kim et al. 2020, margin δ, scale α) or ``cosface``
            (CE of ``s(cos θ - m·1[j = y])``); pytorch-metric-learning class names are accepted too.
        num_classes: C, size of the proxy / β tables (labels must lie in [0, C)).
        miner: ``auto`` (``hard`` for triplet, ``distance_weighted`` for margin, none for proxy
            losses), ``hard``, ``semihard``, ``distance_weighted`` or ``none``.
        dw_dim: ``n`` of distance-weighted sampling; ``auto`` = ``embedding_dim``.
        proxy_init: ``kaiming_normal`` (fan_out), ``kaiming_normal_a5`` (DRML branches) or
            ``kaiming_uniform`` (DRML final table); see :func:`_init_table`.

    The defaults are the baselines' (PA δ = 0.1, α = 32); DRML passes δ = 0.2, α = 64.
    """
    key = LOSS_ALIASES.get(name.lower().replace("-", "_"))
    if key is None:
        raise ValueError(f"unknown base loss '{name}'; choose one of: triplet, margin, proxy_anchor, cosface")
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim must be positive, got {embedding_dim}")
    if key in ("margin", "proxy_anchor", "cosface") and num_classes < 1:
        raise ValueError(f"the {key} loss keeps per-class parameters and needs num_classes >= 1, got {num_classes}")
    miner = DEFAULT_MINER[key] if miner == "auto" else miner
    if miner not in MINERS:
        raise ValueError(f"miner must be 'auto' or one of {MINERS}, got '{miner}'")
    if key in ("proxy_anchor", "cosface") and miner != "none":
        raise ValueError(f"the {key} loss takes no miner, got miner='{miner}'; use miner='auto'")
    if key in ("triplet", "margin") and miner == "none":
        raise ValueError(f"the {key} loss needs a triplet miner: hard, semihard or distance_weighted")
    loss = _pml_loss(key, num_classes, embedding_dim, triplet_margin=triplet_margin, margin_alpha=margin_alpha,
                     margin_beta0=margin_beta0, pa_delta=pa_delta, pa_alpha=pa_alpha, cosface_m=cosface_m,
                     cosface_s=cosface_s, proxy_init=proxy_init)
    miner_kw = ({"cutoff": hard_cutoff} if miner == "hard" else {"margin": semihard_margin} if miner == "semihard"
                else {"dim": embedding_dim if dw_dim == "auto" else int(dw_dim), "cutoff": dw_cutoff,
                      "mask_positives": dw_mask_positives} if miner == "distance_weighted" else {})
    return MetricLoss(key, loss, miner, embedding_dim, miner_kw)


def _pml_loss(key: str, num_classes: int, embedding_dim: int, *, triplet_margin: float, margin_alpha: float,
              margin_beta0: float, pa_delta: float, pa_alpha: float, cosface_m: float, cosface_s: float,
              proxy_init: str) -> nn.Module:
    """The pytorch-metric-learning loss of ``key`` with its parameters; proxy tables drawn by ``proxy_init``."""
    from pytorch_metric_learning import losses as pml

    if key == "triplet":
        return pml.TripletMarginLoss(margin=triplet_margin)
    if key == "margin":
        return pml.MarginLoss(margin=margin_alpha, beta=margin_beta0, learn_beta=True, num_classes=num_classes)
    if key == "proxy_anchor":
        loss = pml.ProxyAnchorLoss(num_classes, embedding_dim, margin=pa_delta, alpha=pa_alpha)
        _init_table(loss.proxies.data, proxy_init)
        return loss
    loss = pml.CosFaceLoss(num_classes, embedding_dim, margin=cosface_m, scale=cosface_s)
    table = torch.empty(num_classes, embedding_dim)
    _init_table(table, proxy_init)
    loss.W.data.copy_(table.T)  # pytorch-metric-learning stores W as [D, C]
    return loss


__all__ = [
    "PROXY_INITS",
    "MetricLoss",
    "build_metric_loss",
    "distance_weighted_triplets",
    "distance_weights",
    "hard_triplets",
    "semihard_triplets",
    "unit_sphere_distances",
]
