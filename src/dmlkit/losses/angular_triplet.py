"""SSDML's smooth angular triplet objective on an orthonormal metric (seed 002, Eq. 3; spec §5, §6).

    J = Σ_i log(1 + exp(m_i)),   m_i = δ²_L(z_i, z_i⁺) − 4 tan²α · δ²_L(z_i⁻, (z_i + z_i⁺)/2),
    δ²_L(x, y) = (x − y)ᵀ L Lᵀ (x − y),   L ∈ R^{d×l},  LᵀL = I_l.

The L-step of Algorithm 1 minimises J over L on the Stiefel manifold with θ fixed:
:func:`minimize_stiefel` is Riemannian conjugate gradients (Manopt's ``conjugategradient`` defaults:
Hestenes–Stiefel β with restarts, Armijo backtracking, ``max_iter`` iterations) with the QR
retraction and vector transport by tangent projection (both from
:mod:`dmlkit.models.orthogonal`). With ``orthogonal=False`` the same routine
runs plain Euclidean CG (Table 4's "w/o orth" ablation).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from dmlkit.models.orthogonal import qr_retraction, tangent_projection


def angular_margins(anchor: Tensor, positive: Tensor, negative: Tensor, L: Tensor | None, alpha_deg: float) -> Tensor:
    """``m_i`` of Eq. 3 for ``T`` triplets of ``[T, d]`` features under ``L`` ``[d, l]`` (None = identity)."""
    if not anchor.shape == positive.shape == negative.shape or anchor.dim() != 2:
        raise ValueError(
            f"anchor, positive and negative must all be [T, d]; got {tuple(anchor.shape)}, "
            f"{tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    if not 0.0 < alpha_deg < 90.0:
        raise ValueError(f"alpha_deg must lie in (0, 90) degrees, got {alpha_deg}")
    if L is not None:
        anchor, positive, negative = anchor @ L, positive @ L, negative @ L  # δ_L is Euclidean in Lᵀz
    tan_sq = math.tan(math.radians(alpha_deg)) ** 2
    pull = (anchor - positive).pow(2).sum(1)
    push = (negative - 0.5 * (anchor + positive)).pow(2).sum(1)
    return pull - 4.0 * tan_sq * push


def angular_triplet_loss(
    anchor: Tensor, positive: Tensor, negative: Tensor, L: Tensor | None = None, alpha_deg: float = 40.0,
    reduction: str = "sum", form: str = "softplus",
) -> Tensor:
    """Eq. 3: ``Σ_i softplus(m_i)`` (``reduction="sum"``, the seed's form) or its mean.

    ``form="hinge"`` sums ``max(0, m_i)`` instead: the angular loss of Wang et al. (ICCV 2017, Eq. 5)
    that Eq. 3 smooths. It stops pushing a triplet once its angle is satisfied, where the softplus
    keeps a gradient ``sigmoid(m_i)`` on every triplet (on SSDML's mined triplets, half of whose
    negatives share the anchor's class, that steady push spreads the classes apart).

    Args:
        anchor, positive, negative: ``[T, d]`` network outputs z (l2-normalised).
        L: ``[d, l]`` metric factor (``None`` = identity).
        alpha_deg: the angle α at the negative (seed: 40° MNIST/CIFAR, 45° FGVC).
        reduction: ``sum`` | ``mean``.
        form: ``softplus`` (Eq. 3 as printed) | ``hinge``.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got '{reduction}'")
    if form not in ("softplus", "hinge"):
        raise ValueError(f"form must be 'softplus' or 'hinge', got '{form}'")
    margins = angular_margins(anchor, positive, negative, L, alpha_deg)
    losses = F.softplus(margins) if form == "softplus" else F.relu(margins)
    if reduction == "mean" and losses.numel() == 0:
        return losses.sum()  # no triplets: 0, still attached to the graph
    return losses.sum() if reduction == "sum" else losses.mean()


def minimize_stiefel(
    cost: Callable[[Tensor], Tensor], L: Tensor, max_iter: int = 10, orthogonal: bool = True,
    armijo: float = 1e-4, contraction: float = 0.5, max_backtracks: int = 25, grad_tol: float = 1e-6,
) -> Tensor:
    """Minimise ``cost(L)`` by (Riemannian) conjugate gradients, warm-started from ``L``.

    Hestenes–Stiefel β⁺ (reset to steepest descent when the direction is not a descent direction),
    Armijo backtracking from an adaptive initial step (twice the last accepted step, as in Manopt's
    adaptive line search), QR retraction and transport by projection when ``orthogonal``.

    Args:
        cost: differentiable scalar function of L (θ is held fixed by the caller: detached features).
        L: ``[d, l]`` starting point (orthonormal columns when ``orthogonal``).
        max_iter: CG iterations (seed: Manopt ``max_iter=10``).
        orthogonal: Stiefel manifold (True) or Euclidean space (the "w/o orth" ablation).

    Returns:
        the new L (a new tensor; orthonormal to float64 QR accuracy when ``orthogonal``).
    """
    project = tangent_projection if orthogonal else (lambda X, G: G)
    retract = (lambda X, V: qr_retraction(X + V)) if orthogonal else (lambda X, V: X + V)

    def value_and_grad(X: Tensor) -> tuple[Tensor, Tensor]:
        X = X.detach().requires_grad_(True)
        with torch.enable_grad():
            f = cost(X)
            (g,) = torch.autograd.grad(f, X)
        return f.detach(), project(X.detach(), g)

    L = L.detach()
    f, grad = value_and_grad(L)
    direction = -grad
    step = None
    for _ in range(max_iter):
        grad_norm_sq = (grad * grad).sum()
        if grad_norm_sq.sqrt() <= grad_tol:
            break
        slope = (grad * direction).sum()
        if slope >= 0:  # not a descent direction: restart with steepest descent
            direction, slope = -grad, -grad_norm_sq
        d_norm = direction.norm()
        t = (1.0 / d_norm) if step is None else 2.0 * step / d_norm  # initial step length along direction
        for _ in range(max_backtracks):
            candidate = retract(L, t * direction)
            f_new = cost(candidate).detach()
            if f_new <= f + armijo * t * slope:
                break
            t = t * contraction
        else:
            break  # no decrease found: stay at L
        step = float(t * d_norm)
        f_new, grad_new = value_and_grad(candidate)
        moved = project(candidate, direction)  # vector transport by projection
        grad_old = project(candidate, grad)
        diff = grad_new - grad_old
        denom = (moved * diff).sum()
        beta = torch.clamp((grad_new * diff).sum() / denom, min=0.0) if denom.abs() > 1e-30 else 0.0
        L, f, grad = candidate, f_new, grad_new
        direction = -grad + beta * moved
    return L


def metric_step(
    anchor: Tensor, positive: Tensor, negative: Tensor, L: Tensor, alpha_deg: float = 40.0,
    reduction: str = "sum", max_iter: int = 10, orthogonal: bool = True, form: str = "softplus",
) -> Tensor:
    """SSDML's L-step (Algorithm 1, θ fixed): minimise Eq. 3 over L by :func:`minimize_stiefel`.

    Args:
        anchor, positive, negative: ``[T, d]`` features z; detached here (θ is held fixed).
        L: ``[d, l]`` the current metric factor, the warm start.
        alpha_deg, reduction, form: as :func:`angular_triplet_loss`.
        max_iter, orthogonal: as :func:`minimize_stiefel`.

    Returns:
        the new ``[d, l]`` L (a new tensor; the caller copies it into its parameter).
    """
    fixed = (anchor.detach(), positive.detach(), negative.detach())
    return minimize_stiefel(lambda X: angular_triplet_loss(*fixed, X, alpha_deg, reduction, form), L, max_iter,
                            orthogonal)
