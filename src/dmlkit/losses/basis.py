"""SLADE's feature basis learning and confident pair selection (spec SLADE.md §6-§7).

A learnable basis ``W_a [n_basis, d]`` (rows ``a_c``, one per labeled class) maps an embedding to
``r = W_a f``. Its two losses:

* ``L_CE = -1/|B_l| Σ_i log softmax(W_a f_i)_{y_i}`` on the labeled items (bias-free linear classifier);
* ``L_SD = (σ⁺)² + (σ⁻)² + λ_SD [μ⁻ − μ⁺ + m_SD]_+`` on the unlabeled pairs, where ``μ^±, (σ^±)²`` are
  momentum Gaussians of the basis similarities ``s_ij = cos(r_i, r_j)`` of same-cluster (+) and
  different-cluster (−) pairs: ``μ ← β sg(μ) + (1 − β) μ_b`` (each seeded from its first batch, and
  updated only on batches holding pairs of its kind).

Confident pairs (no gradient): ``P_u = {ŷ_i = ŷ_j, s_ij ≥ T_1}``, ``N_u = {ŷ_i ≠ ŷ_j, s_ij ≤ T_2}`` with
``T_1 = μ⁺ − κσ⁺``, ``T_2 = μ⁻ + κσ⁻``; active only when ``T_1 > T_2`` (κ = 0: ``μ⁺ > μ⁻``). Filtering
the positives only (``select_negatives=False``) keeps every cross-cluster pair in ``N_u``: the spec's
``N_u`` holds the easy half of the negatives, and a Multi-Similarity loss learns mostly from the hard ones.

The ranking loss ``L_rank`` (contrastive or Multi-Similarity) runs on labels, or on the selected pairs:
``L_rank(B_u; P_u, N_u)`` (§8).

The closed forms are reconstructions (no public code): every one is an option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BASIS_CE = ("bias_free", "bias")
BASIS_SIM = ("cosine", "softmax")
SD_GRADIENT = ("momentum", "batch")
RANK_LOSSES = ("ms", "contrastive")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def upper_pairs(n: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``[n, n]`` mask of the pairs ``i < j``."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


class FeatureBasis(nn.Module):
    """The basis ``W_a`` with its classifier loss and pairwise similarity.

    Args:
        n_basis: number of basis vectors (SLADE: C, the labeled classes).
        dim: embedding size d.
        ce: ``"bias_free"`` (logits ``W_a f``) or ``"bias"`` (``W_a f + b``).
        similarity: ``"cosine"`` (``s_ij = cos(W_a f_i, W_a f_j)``) or ``"softmax"`` (cosine of the
            class-probability vectors ``softmax(W_a f)``).
    """

    def __init__(self, n_basis: int, dim: int, ce: str = "bias_free", similarity: str = "cosine") -> None:
        super().__init__()
        if n_basis < 1 or dim < 1:
            raise ValueError(f"FeatureBasis needs n_basis >= 1 and dim >= 1, got {n_basis} and {dim}")
        self.ce_kind = _choice("basis_ce", ce, BASIS_CE)
        self.similarity_kind = _choice("basis_sim", similarity, BASIS_SIM)
        self.weight = nn.Parameter(torch.empty(n_basis, dim))
        nn.init.xavier_normal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(n_basis)) if ce == "bias" else None

    def representation(self, f: Tensor) -> Tensor:
        """``r = W_a f``: ``[B, d] -> [B, n_basis]``."""
        return f @ self.weight.T

    def logits(self, f: Tensor) -> Tensor:
        r = self.representation(f)
        return r + self.bias if self.bias is not None else r

    def ce_loss(self, f: Tensor, labels: Tensor) -> Tensor:
        """``L_CE``: cross-entropy of ``logits(f) [B, n_basis]`` against ``labels [B]`` (0..n_basis-1)."""
        if len(f) == 0:
            return self.weight.sum() * 0.0
        return F.cross_entropy(self.logits(f), labels)

    def similarity(self, f: Tensor) -> Tensor:
        """``s_ij ∈ [-1, 1]``: ``[B, d] -> [B, B]``, symmetric, invariant to scaling f or ``W_a``."""
        r = self.representation(f) if self.similarity_kind == "cosine" else self.logits(f).softmax(-1)
        r = F.normalize(r, dim=1)
        return r @ r.T


class SimilarityGaussians(nn.Module):
    """Momentum Gaussians ``(μ⁺, σ⁺²)`` of same-cluster and ``(μ⁻, σ⁻²)`` of different-cluster basis
    similarities, and ``L_SD``.

    Args:
        beta: momentum β (0.99).
        lambda_sd: weight of the mean-separation hinge.
        margin: ``m_SD``.
        gradient: ``"momentum"`` (the loss uses the momentum statistics; gradient reaches the batch part
            scaled by 1 − β) or ``"batch"`` (the loss uses the batch statistics; the momentum ones only
            set the thresholds).
    """

    def __init__(
        self, beta: float = 0.99, lambda_sd: float = 1.0, margin: float = 0.5, gradient: str = "momentum"
    ) -> None:
        super().__init__()
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta, self.lambda_sd, self.margin = float(beta), float(lambda_sd), float(margin)
        self.gradient = _choice("sd_gradient", gradient, SD_GRADIENT)
        for sign in ("pos", "neg"):
            self.register_buffer(f"mu_{sign}", torch.zeros(()))
            self.register_buffer(f"var_{sign}", torch.zeros(()))
            self.register_buffer(f"seeded_{sign}", torch.zeros((), dtype=torch.bool))

    def reset(self) -> None:
        for sign in ("pos", "neg"):
            getattr(self, f"mu_{sign}").zero_()
            getattr(self, f"var_{sign}").zero_()
            getattr(self, f"seeded_{sign}").fill_(False)

    @property
    def active(self) -> bool:
        return bool(self.seeded_pos) and bool(self.seeded_neg)

    def _update(self, sign: str, values: Tensor) -> tuple[Tensor, Tensor]:
        """Momentum step for one Gaussian from a batch of similarities; returns ``(μ, σ²)`` for the loss
        (with gradient as ``self.gradient`` says) and stores their detached momentum values."""
        mu_old, var_old = getattr(self, f"mu_{sign}"), getattr(self, f"var_{sign}")
        if len(values) == 0:
            return mu_old.clone(), var_old.clone()
        mu_b, var_b = values.mean(), values.var(unbiased=False)
        if bool(getattr(self, f"seeded_{sign}")):
            mu = self.beta * mu_old + (1.0 - self.beta) * mu_b
            var = self.beta * var_old + (1.0 - self.beta) * var_b
        else:  # seeded from its first batch
            mu, var = mu_b, var_b
        mu_old.copy_(mu.detach())
        var_old.copy_(var.detach())
        getattr(self, f"seeded_{sign}").fill_(True)
        return (mu, var) if self.gradient == "momentum" else (mu_b, var_b)

    def forward(self, positives: Tensor, negatives: Tensor) -> Tensor:
        """Update both Gaussians from ``S⁺`` and ``S⁻`` (1-D similarity values) and return
        ``L_SD = σ⁺² + σ⁻² + λ_SD [μ⁻ − μ⁺ + m_SD]_+`` (the hinge only once both Gaussians exist)."""
        mu_p, var_p = self._update("pos", positives)
        mu_n, var_n = self._update("neg", negatives)
        loss = var_p + var_n
        if self.active:
            loss = loss + self.lambda_sd * (mu_n - mu_p + self.margin).clamp_min(0.0)
        anchor = positives.sum() * 0.0 + negatives.sum() * 0.0  # keeps the graph when a kind is absent
        return loss + anchor

    def thresholds(self, kappa: float = 0.0) -> tuple[float, float]:
        """``T_1 = μ⁺ − κσ⁺``, ``T_2 = μ⁻ + κσ⁻`` (no gradient)."""
        t1 = float(self.mu_pos) - kappa * float(self.var_pos.clamp_min(0).sqrt())
        t2 = float(self.mu_neg) + kappa * float(self.var_neg.clamp_min(0).sqrt())
        return t1, t2


def pair_statistics_inputs(similarity: Tensor, pseudo_labels: Tensor) -> tuple[Tensor, Tensor]:
    """``S⁺`` and ``S⁻``: the values ``s_ij`` (i < j) of same- and different-label pairs, 1-D each."""
    upper = upper_pairs(len(pseudo_labels), similarity.device)
    same = pseudo_labels[:, None] == pseudo_labels[None, :]
    return similarity[upper & same], similarity[upper & ~same]


@torch.no_grad()
def select_pairs(
    similarity: Tensor,
    pseudo_labels: Tensor,
    t1: float,
    t2: float,
    require_label_agreement: bool = True,
    select_negatives: bool = True,
) -> tuple[Tensor, Tensor]:
    """Confident pairs among ``i < j``: ``-> (positive mask, negative mask)``, boolean ``[B, B]``.

    ``P = {s_ij ≥ t1} (∩ {ŷ_i = ŷ_j})``, ``N = {s_ij ≤ t2} (∩ {ŷ_i ≠ ŷ_j})``; both empty unless ``t1 > t2``.
    ``select_negatives=False`` filters the positives only: ``N`` is every pair with ``ŷ_i ≠ ŷ_j`` not in ``P``
    (the hard negatives, which a Multi-Similarity loss weights most, stay in; see
    ``SLADE.Config.pair_selection``).
    """
    n = len(pseudo_labels)
    upper = upper_pairs(n, similarity.device)
    same = pseudo_labels[:, None] == pseudo_labels[None, :]
    all_negatives = upper & ~same
    if not t1 > t2:
        empty = torch.zeros(n, n, dtype=torch.bool, device=similarity.device)
        return empty, empty.clone() if select_negatives else all_negatives
    s = similarity.detach()
    pos, neg = upper & (s >= t1), upper & (s <= t2)
    if require_label_agreement:
        pos, neg = pos & same, neg & ~same
    return pos, neg if select_negatives else all_negatives & ~pos  # a pair is never both


def all_pairs(pseudo_labels: Tensor) -> tuple[Tensor, Tensor]:
    """The no-selection ablation: every same-label pair positive, every other pair negative (i < j)."""
    upper = upper_pairs(len(pseudo_labels), pseudo_labels.device)
    same = pseudo_labels[:, None] == pseudo_labels[None, :]
    return upper & same, upper & ~same


class RankingLoss(nn.Module):
    """``L_rank`` on labels, or on explicit pair masks (SLADE §4, §8).

    ``"contrastive"``: ``1/|P| Σ_P [d_ij − m_pos]_+ + 1/|N| Σ_N [m_neg − d_ij]_+`` on Euclidean distances
    of L2-normalised embeddings (pytorch-metric-learning's ContrastiveLoss with a mean over all pairs).
    ``"ms"``: Multi-Similarity (α, β, base λ) on cosine similarity, with its miner (ε) on labeled batches.
    """

    def __init__(
        self,
        kind: str = "ms",
        m_pos: float = 0.0,
        m_neg: float = 1.0,
        ms_alpha: float = 2.0,
        ms_beta: float = 50.0,
        ms_base: float = 0.5,
        ms_eps: float = 0.1,
    ) -> None:
        super().__init__()
        from pytorch_metric_learning import losses, miners, reducers

        self.kind = _choice("rank_loss", kind, RANK_LOSSES)
        if kind == "contrastive":
            self.loss = losses.ContrastiveLoss(
                pos_margin=m_pos, neg_margin=m_neg, reducer=reducers.MeanReducer()
            )
            self.miner = None
        else:
            self.loss = losses.MultiSimilarityLoss(alpha=ms_alpha, beta=ms_beta, base=ms_base)
            self.miner = miners.MultiSimilarityMiner(epsilon=ms_eps)

    def labeled(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Over the pairs of a labeled batch ``[B, d], [B]``."""
        if len(embeddings) < 2:
            return embeddings.sum() * 0.0
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs)

    def pairs(self, embeddings: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        """Over the pairs of the boolean masks ``[B, B]`` (both orders, so MS sees every anchor's set);
        exactly 0 with zero gradient when no pair is given."""
        if not (positive.any() or negative.any()):
            return embeddings.sum() * 0.0
        a1, p = torch.nonzero(positive | positive.T, as_tuple=True)
        a2, n = torch.nonzero(negative | negative.T, as_tuple=True)
        ids = torch.arange(len(embeddings), device=embeddings.device)
        return self.loss(embeddings, ids, (a1, p, a2, n))
