"""Objectives and metric steps of the five classical semi-supervised DML baselines, made deep by
SSDML's Algorithm 1 (seed 002, "Extending Classical SSDML to Deep SSDML"; spec SSDML.md §8).

Every objective is a function of a mini-batch: ``x`` ``[B, D]`` are the embeddings, ``labels``
``[B]`` (-1 = unlabeled) give the labeled pairs, and ``(edges [E, 2], weights [E])`` are the
partition-graph edges inside the batch (``i < j``, batch positions). With ``metric=None`` the
embeddings are taken *after* the metric (``x = z M^{1/2}``) and ``δ²_M(i, j) = ‖x_i − x_j‖²``;
with ``metric=M`` ``x`` is the l2-normalised ``z`` and ``δ²_M = (z_i − z_j)ᵀ M (z_i − z_j)``
(the form the M-steps differentiate). Means over empty pair sets are 0.

The M-steps (θ fixed, Alg. 1 line 3) are here too, as pure functions on tensors.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


# --------------------------------------------------------------------------- pairs and distances
def batch_pairs(labels: Tensor) -> dict[str, Tensor]:
    """Unordered batch pairs ``i < j`` as LongTensors ``[P, 2]``: ``similar`` (both labeled, same
    class: 𝒮), ``dissimilar`` (both labeled, different classes: 𝒟), ``unlabeled`` (both -1: 𝒰)."""
    i, j = torch.triu_indices(len(labels), len(labels), 1, device=labels.device)
    li, lj = labels[i], labels[j]
    both = (li >= 0) & (lj >= 0)
    masks = {"similar": both & (li == lj), "dissimilar": both & (li != lj), "unlabeled": (li < 0) & (lj < 0)}
    return {name: torch.stack([i[m], j[m]], dim=1) for name, m in masks.items()}


def pair_sq_dists(x: Tensor, pairs: Tensor, metric: Tensor | None = None) -> Tensor:
    """``δ²(x_i, x_j)`` for every row ``(i, j)`` of ``pairs`` ``[P, 2]`` -> ``[P]``; Euclidean when
    ``metric`` is None, else ``(x_i − x_j)ᵀ M (x_i − x_j)``."""
    i, j = pairs[:, 0], pairs[:, 1]
    if metric is None:
        return (x[i] - x[j]).pow(2).sum(dim=1)
    xm = x @ metric  # δ²_M = x_iᵀMx_i + x_jᵀMx_j − 2 x_iᵀMx_j: O(B d² + P d), not O(P d²)
    norms = (xm * x).sum(dim=1)
    return norms[i] + norms[j] - 2 * (xm[i] * x[j]).sum(dim=1)


def _mean(values: Tensor) -> Tensor:
    """Mean that is 0 (and still attached to the graph) for an empty tensor."""
    return values.sum() / max(values.numel(), 1)


def _check_batch(x: Tensor, labels: Tensor) -> None:
    if x.dim() != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"expected embeddings [B, D] and labels [B], got {tuple(x.shape)} and {tuple(labels.shape)}")


# --------------------------------------------------------------------------- θ-step objectives
def lrml_loss(x: Tensor, labels: Tensor, edges: Tensor, weights: Tensor, gamma_s: float = 1.0,
              gamma_d: float = 1.0, metric: Tensor | None = None) -> dict[str, Tensor]:
    """Deep-LRML (seed eq. 2, Hoi et al. 2010; batch form of spec §8)::

        J = γ_S mean_𝒮 δ²_M − γ_D mean_𝒟 δ²_M + (1/|E_B|) Σ_{E_B} W_ij δ²_M(z_i, z_j)

    The last term is the batch form of the Laplacian regulariser ``Tr(M X 𝓛 Xᵀ) = ½ Σ W_ij δ²_M``.

    Returns ``{"loss", "similar", "dissimilar", "laplacian"}`` (the unweighted parts).
    """
    _check_batch(x, labels)
    pairs = batch_pairs(labels)
    similar = _mean(pair_sq_dists(x, pairs["similar"], metric))
    dissimilar = _mean(pair_sq_dists(x, pairs["dissimilar"], metric))
    laplacian = _mean(weights * pair_sq_dists(x, edges, metric))
    loss = gamma_s * similar - gamma_d * dissimilar + laplacian
    return {"loss": loss, "similar": similar.detach(), "dissimilar": dissimilar.detach(), "laplacian": laplacian.detach()}


def isdml_loss(x: Tensor, labels: Tensor, edges: Tensor, weights: Tensor, gamma_s: float = 1.0,
               gamma_d: float = 1.0, metric: Tensor | None = None) -> dict[str, Tensor]:
    """Deep-ISDML (Ying et al. 2017; spec §8, reconstruction): LRML's objective with the
    density-weighted graph of :func:`density_graph_weights` in ``weights``."""
    return lrml_loss(x, labels, edges, weights, gamma_s, gamma_d, metric)


def seraph_probability(sq_dists: Tensor, y: Tensor | float, eta: float = 1.0) -> Tensor:
    """SERAPH's pair model ``p(y) = 1 / (1 + exp(y (δ²_M − η)))``, y = +1 similar, −1 dissimilar."""
    return torch.sigmoid(-y * (sq_dists - eta))


def seraph_loss(x: Tensor, labels: Tensor, eta: float = 1.0, mu: float = 1.0, trace_weight: float = 0.0,
                metric: Tensor | None = None) -> dict[str, Tensor]:
    """Deep-SERAPH (seed eq. 1 with μ, typo T3; Niu et al. 2014; spec §8)::

        J = −mean_{𝒮∪𝒟} log p(y_ij) + μ mean_𝒰 H(p_ij) + λ tr(M),   H(p) = −Σ_{y=±1} p(y) log p(y)

    Minimising the entropy of the unlabeled pairs' posteriors pushes their distances away from η.
    ``λ tr(M)`` is only added when ``metric`` is given (in the θ-step it is a constant).

    Returns ``{"loss", "likelihood" (the mean −log p), "entropy", "trace"}``.
    """
    _check_batch(x, labels)
    pairs = batch_pairs(labels)
    labeled = torch.cat([pairs["similar"], pairs["dissimilar"]])
    y = torch.cat([x.new_ones(len(pairs["similar"])), -x.new_ones(len(pairs["dissimilar"]))])
    nll = _mean(F.softplus(y * (pair_sq_dists(x, labeled, metric) - eta)))  # −log p(y) = softplus(y(δ²−η))
    t = eta - pair_sq_dists(x, pairs["unlabeled"], metric)  # logit of p(+1)
    p = torch.sigmoid(t)
    entropy = _mean(p * F.softplus(-t) + (1 - p) * F.softplus(t))
    trace = torch.trace(metric) if metric is not None else x.new_zeros(())
    loss = nll + mu * entropy + trace_weight * trace
    return {"loss": loss, "likelihood": nll.detach(), "entropy": entropy.detach(), "trace": trace.detach()}


def affinity_laplacian_loss(x: Tensor, edges: Tensor, weights: Tensor, metric: Tensor | None = None) -> dict[str, Tensor]:
    """θ-step of Deep-APLLR and Deep-APIT (spec §8): ``(1/|E_B|) Σ_{E_B} W_ij δ²_M`` with the signed,
    propagated affinity W. No triplet mining (the seed stresses this)."""
    laplacian = _mean(weights * pair_sq_dists(x, edges, metric))
    return {"loss": laplacian, "laplacian": laplacian.detach()}


# --------------------------------------------------------------------------- metric (M) steps
def weighted_scatter(z: Tensor, pairs: Tensor, weights: Tensor, chunk: int = 65536) -> Tensor:
    """``Σ_p w_p Δ_p Δ_pᵀ`` with ``Δ_p = z_i − z_j`` -> ``[D, D]``, so ``Σ_p w_p δ²_M = tr(M C)``.
    Chunked over pairs so a partition's 2nk edges never need more than ``chunk × D`` memory."""
    out = z.new_zeros(z.shape[1], z.shape[1])
    for start in range(0, len(pairs), chunk):
        p, w = pairs[start:start + chunk], weights[start:start + chunk]
        diff = z[p[:, 0]] - z[p[:, 1]]
        out += (diff * w[:, None]).T @ diff
    return out


def lrml_scatter(z: Tensor, labels: Tensor, edges: Tensor, weights: Tensor, gamma_s: float = 1.0,
                 gamma_d: float = 1.0) -> Tensor:
    """``C [D, D]`` with ``lrml_loss(z, ..., metric=M)["loss"] == tr(M C)`` (J is linear in M)."""
    pairs = batch_pairs(labels)
    ns, nd, ne = len(pairs["similar"]), len(pairs["dissimilar"]), len(edges)
    w = torch.cat([z.new_full((ns,), gamma_s / max(ns, 1)), z.new_full((nd,), -gamma_d / max(nd, 1)),
                   weights.to(z.dtype) / max(ne, 1)])
    return weighted_scatter(z, torch.cat([pairs["similar"], pairs["dissimilar"], edges.to(pairs["similar"])]), w)


def _symmetric_eig(matrix: Tensor) -> tuple[Tensor, Tensor]:
    matrix = matrix.double()
    return torch.linalg.eigh((matrix + matrix.T) / 2)


def lrml_metric_step(scatter: Tensor, floor: float = 1e-3) -> Tensor:
    """LRML's M-step (spec §8, reconstruction): ``argmin tr(M C)`` over ``{M ≻ 0, log|M| ≥ 0}`` is
    ``M = det(C)^{1/d} C^{-1}`` (Lagrangian: C = ν M⁻¹, det M = 1). C's eigenvalues are clipped
    from below at ``floor · Σ|λ_i| / d`` (= ``floor · tr(C)/d`` for PSD C, the spec's rule, which
    would be ≤ 0 for the indefinite C that ``−γ_D`` often makes). Returns float64 ``[D, D]``
    with ``log det M = 0``."""
    evals, evecs = _symmetric_eig(scatter)
    scale = evals.abs().mean().clamp_min(1e-12)
    evals = evals.clamp_min(floor * scale)
    geo_mean = evals.log().mean().exp()
    return (evecs * (geo_mean / evals)) @ evecs.T


def project_psd(matrix: Tensor, floor: float = 0.0) -> Tensor:
    """Nearest symmetric matrix with eigenvalues ≥ ``floor`` (eigenvalue clipping), float64."""
    evals, evecs = _symmetric_eig(matrix)
    return (evecs * evals.clamp_min(floor)) @ evecs.T


def matrix_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric PSD square root ``A`` with ``A A = M`` (used as ``x = z A``, so ``‖x_i − x_j‖² = δ²_M``)."""
    evals, evecs = _symmetric_eig(matrix)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def seraph_metric_step(z: Tensor, labels: Tensor, metric: Tensor, eta: float = 1.0, mu: float = 1.0,
                       trace_weight: float = 1e-3, lr: float = 1e-2, steps: int = 10) -> Tensor:
    """SERAPH's M-step (spec §8): ``steps`` projected-gradient steps ``M ← Π_{⪰0}(M − lr ∇_M J)`` on
    :func:`seraph_loss` with ``z`` fixed. Returns float64 ``[D, D]``."""
    z = z.detach().double()
    m = metric.detach().double()
    for _ in range(steps):
        with torch.enable_grad():  # callers may be inside no_grad (θ fixed)
            m.requires_grad_(True)
            loss = seraph_loss(z, labels, eta, mu, trace_weight, metric=m)["loss"]
            (grad,) = torch.autograd.grad(loss, m)
        m = project_psd(m.detach() - lr * grad)
    return m.detach()


def affinity_scatter(z: Tensor, edges: Tensor, weights: Tensor) -> Tensor:
    """``C_W = ½ Σ_{i,j} W_ij Δ_ij Δ_ijᵀ / Σ_{i,j} |W_ij|`` over a symmetric graph given by its
    unordered edges ``i < j`` (spec §8, APLLR/APIT). Over ordered pairs both sums double, so
    ``C_W = Σ_{i<j} W Δ Δᵀ / (2 Σ_{i<j} |W|)``."""
    total = weights.abs().sum().clamp_min(1e-12)
    return weighted_scatter(z, edges, weights.to(z.dtype)) / (2 * total)


def affinity_metric_step(prior: Tensor, scatter: Tensor, lam: float = 1.0, ridge: float = 1e-3,
                         floor: float = 1e-3) -> Tensor:
    """APLLR/APIT M-step (spec §8, reconstruction), the stationary point of
    ``D_ℓd(M, M_0) + λ tr(M C_W)``::

        M = ((M_0 + ridge·I)⁻¹ + λ C_W)⁻¹,   eigenvalues of the bracket clipped at ``floor``.
    """
    eye = torch.eye(len(prior), dtype=torch.float64, device=prior.device)
    bracket = torch.linalg.inv(prior.double() + ridge * eye) + lam * scatter.double()
    evals, evecs = _symmetric_eig(bracket)
    return (evecs / evals.clamp_min(floor)) @ evecs.T


def kissme_prior(z: Tensor, labels: Tensor, ridge: float = 1e-3) -> Tensor:
    """APLLR's prior (KISSME, Köstinger et al. 2012): ``Π_{⪰0}(Σ_𝒮⁻¹ − Σ_𝒟⁻¹)`` with
    ``Σ = mean ΔΔᵀ + ridge·I`` over the labeled similar / dissimilar pairs. float64 ``[D, D]``."""
    z = z.detach().double()
    pairs = batch_pairs(labels)
    if len(pairs["similar"]) == 0 or len(pairs["dissimilar"]) == 0:
        raise ValueError("the KISSME prior needs at least one similar and one dissimilar labeled pair; "
                         "label at least two items of one class and one of another")
    eye = torch.eye(z.shape[1], dtype=torch.float64, device=z.device)
    inverses = []
    for kind in ("similar", "dissimilar"):
        p = pairs[kind]
        cov = weighted_scatter(z, p, z.new_full((len(p),), 1.0 / len(p))) + ridge * eye
        inverses.append(torch.linalg.inv(cov))
    return project_psd(inverses[0] - inverses[1])


def itml_prior(z: Tensor, labels: Tensor, slack: float = 1.0, sweeps: int = 10, max_constraints: int | None = None,
               percentiles: tuple[float, float] = (5.0, 95.0), generator: torch.Generator | None = None) -> Tensor:
    """APIT's prior (ITML, Davis et al. 2007, Algorithm 1): Bregman projections from the reference
    ``A_0 = I`` onto ``δ²_A ≤ u`` (similar) and ``δ²_A ≥ l`` (dissimilar), with slack γ = ``slack``;
    u and l are the ``percentiles`` of the labeled squared distances; ``sweeps`` passes over the
    constraints (at most ``max_constraints`` random labeled pairs; ITML's code uses 40·C²).

    The step is the one of ITML's published code, ``α = min(λ_c, δ γ/(γ+1) (1/p − 1/ξ_c))``; the
    paper's printed ``δ/2 (1/p − γ/ξ_c)`` agrees with it at the spec's γ = 1 only.
    The projections are sequential by definition (each one uses the previous A), hence the loop.
    Returns float64 ``[D, D]`` (PSD: each update keeps A ≻ 0).
    """
    device = z.device
    pairs = batch_pairs(labels)
    if len(pairs["similar"]) == 0 or len(pairs["dissimilar"]) == 0:
        raise ValueError("the ITML prior needs at least one similar and one dissimilar labeled pair; "
                         "label at least two items of one class and one of another")
    z = z.detach().double().cpu()
    constraints = torch.cat([pairs["similar"], pairs["dissimilar"]]).cpu()
    delta = np.concatenate([np.ones(len(pairs["similar"])), -np.ones(len(pairs["dissimilar"]))])
    labeled_sq = pair_sq_dists(z, constraints).numpy()
    if labeled_sq.max() <= 0:  # every labeled item coincides: no direction to learn
        return torch.eye(z.shape[1], dtype=torch.float64, device=device)
    # ITML's targets must be > 0 (1/ξ); when >= 5% of the pairs coincide the 5th percentile is 0
    upper, lower = np.maximum(np.percentile(labeled_sq, list(percentiles)), 1e-6 * labeled_sq.max())
    if max_constraints is not None and len(constraints) > max_constraints:
        keep = torch.randperm(len(constraints), generator=generator)[:max_constraints]
        constraints, delta = constraints[keep], delta[keep.numpy()]
    diffs = (z[constraints[:, 0]] - z[constraints[:, 1]]).numpy()
    xi = np.where(delta > 0, upper, lower)  # the targets ξ, moved by the slack rule
    dual = np.zeros(len(diffs))
    a = np.eye(z.shape[1])
    for _ in range(sweeps):
        for c in range(len(diffs)):
            v = diffs[c]
            av = a @ v
            p = float(v @ av)
            if p <= 1e-12:  # a duplicated pair carries no constraint
                continue
            alpha = min(dual[c], delta[c] * slack / (slack + 1) * (1 / p - 1 / xi[c]))
            beta = delta[c] * alpha / (1 - delta[c] * alpha * p)
            xi[c] = slack * xi[c] / (slack + delta[c] * alpha * xi[c])
            dual[c] -= alpha
            a += beta * np.outer(av, av)
    return torch.from_numpy(a).to(device)


# --------------------------------------------------------------------------- partition graphs
def undirected_edges(neighbours: Tensor, weights: Tensor, reduce: str = "mean") -> tuple[Tensor, Tensor]:
    """The symmetric graph of directed kNN weights ``w(i → neighbours[i, m]) = weights[i, m]``.

    Args:
        neighbours: long ``[n, k]``; weights: ``[n, k]``.
        reduce: ``"mean"`` — an edge present in one or both directions keeps the mean of its
            directed values (the union kNN graph; for a symmetric kernel that is the kernel itself);
            ``"half_sum"`` — ``(W + Wᵀ)/2`` with an absent direction counting 0 (ISDML).

    Returns:
        ``(edges [E, 2] with i < j, weights [E])``, edges sorted by ``i·n + j``.
    """
    if reduce not in ("mean", "half_sum"):
        raise ValueError(f"reduce must be 'mean' or 'half_sum', got '{reduce}'")
    n, k = neighbours.shape
    rows = torch.arange(n, device=neighbours.device).repeat_interleave(k)
    cols = neighbours.reshape(-1)
    keep = rows != cols
    lo, hi, w = torch.minimum(rows, cols)[keep], torch.maximum(rows, cols)[keep], weights.reshape(-1)[keep]
    keys, inverse, counts = torch.unique(lo * n + hi, return_inverse=True, return_counts=True)
    total = torch.zeros(len(keys), dtype=w.dtype, device=w.device).index_add_(0, inverse, w)
    values = total / counts if reduce == "mean" else total / 2
    return torch.stack([keys // n, keys % n], dim=1), values


def heat_kernel_weights(sq_dists: Tensor) -> Tensor:
    """LRML's graph (spec §8): ``W_ij = exp(−‖z_i − z_j‖² / σ²)`` on the kNN edges ``[n, k]``, with
    σ² the mean squared kNN distance (open choice)."""
    return torch.exp(-sq_dists / sq_dists.mean().clamp_min(1e-12))


def isdml_bandwidth(z: Tensor, nearest_sq: Tensor, block_size: int = 2048) -> float:
    """ISDML's σ = min D + (max D − min D)/10 over the partition's pairwise distances (spec §8).
    ``min D`` is the smallest nearest-neighbour distance (``nearest_sq`` ``[n]``, squared); ``max D``
    is found in row blocks, never forming an n×n matrix."""
    sq = (z * z).sum(1)
    largest = max(float((sq[s:s + block_size, None] + sq[None, :] - 2 * z[s:s + block_size] @ z.T).max())
                  for s in range(0, len(z), block_size))
    smallest, largest = float(nearest_sq.min().clamp_min(0).sqrt()), max(largest, 0.0) ** 0.5
    return smallest + (largest - smallest) / 10


def density_graph_weights(sq_dists: Tensor, sigma: float) -> Tensor:
    """ISDML's density-weighted directed graph (spec §8, reconstruction) on the kNN edges ``[n, k]``:
    ``W_ij = ρ_i exp(−‖z_i − z_j‖² / 2σ²)``, ``ρ_i`` the Parzen density over ``N_k(i)`` (bandwidth σ)
    normalised to mean 1. Symmetrise with ``undirected_edges(..., reduce="half_sum")``."""
    sigma = max(sigma, 1e-12)  # σ = 0 when every point coincides (a collapsed network): all weights 1
    kernel = torch.exp(-sq_dists / (2 * sigma ** 2))
    density = kernel.mean(dim=1)
    density = density / density.mean().clamp_min(1e-12)
    return density[:, None] * kernel
