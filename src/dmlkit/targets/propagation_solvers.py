"""Certified sparse solvers of ``X = (1−γ)(I−γQ)⁻¹ R`` for SSDML affinity propagation (seed 002; spec
SSDML §3): block BiCGSTAB (:func:`krylov_solve`) and the Neumann series (:func:`neumann_solve`).

Q is row-stochastic, so ``‖(I−γQ)⁻¹‖_∞ = 1/(1−γ)`` bounds the error by the residual; see the module
docstring of :mod:`dmlkit.targets.propagation` for the algebra that uses them.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def neumann_solve(
    Q: sp.spmatrix, rhs: np.ndarray | Tensor, gamma: float, tol: float = 1e-6, max_sweeps: int | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, int]:
    """``X = (1−γ)(I−γQ)⁻¹ R`` by the Neumann series ``(1−γ)Σ_t γᵗQᵗR`` with sparse ``Q``.

    Stops after T sweeps once ``γ^{T+1} max|Q^{T+1}R| ≤ tol`` for every column, which bounds the
    entrywise error of X by ``tol`` (Q row-stochastic). ``max_sweeps`` defaults to the a-priori
    bound ``⌈log(tol / max|R|) / log γ⌉``.

    Args:
        Q: row-stochastic ``[n, n]`` sparse matrix.
        rhs: ``[n, b]`` right-hand sides.
        gamma: 0 < γ < 1.
        tol: entrywise tolerance on X.
        device: where the sweeps run (``cuda`` is much faster for large n).

    Returns:
        ``(X [n, b] float64 on device, sweeps used)``.
    """
    _check_gamma(gamma)
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    Qt = _torch_csr(Q, device)
    P = torch.as_tensor(rhs, dtype=torch.float64, device=device)
    scale = float(P.abs().max()) if P.numel() else 0.0
    X = (1.0 - gamma) * P
    if scale == 0.0:
        return X, 0
    if max_sweeps is None:
        max_sweeps = max(1, math.ceil(math.log(tol / scale) / math.log(gamma)))
    weight = 1.0 - gamma
    for sweep in range(1, max_sweeps + 1):
        P = Qt @ P
        weight *= gamma
        if weight / (1.0 - gamma) * float(P.abs().max()) <= tol:  # γ^{T+1} max|Q^{T+1}R| ≤ tol
            return X, sweep - 1
        X.add_(P, alpha=weight)
    return X, max_sweeps


def krylov_solve(
    Q: sp.spmatrix, rhs: np.ndarray | Tensor, gamma: float, tol: float = 1e-6, max_iter: int = 2000,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, int]:
    """``X = (1−γ)(I−γQ)⁻¹ R`` by BiCGSTAB, run on all columns at once (one sparse product per half-step).

    Certified like :func:`neumann_solve`: since ``‖(I−γQ)⁻¹‖_∞ = 1/(1−γ)`` for row-stochastic Q, the
    entrywise error of a column is at most ``max|residual| / (1−γ)``; a column stops once its *true*
    residual (recomputed, not the recurrence's) meets ``tol·(1−γ)``. Columns that stagnate or break
    down are finished by Neumann sweeps, so the returned X always meets ``tol``.

    Returns:
        ``(X [n, b] float64 on device, largest number of iterations any column used)``.
    """
    _check_gamma(gamma)
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    Qt = _torch_csr(Q, device)

    def apply(V: Tensor) -> Tensor:  # (I − γQ)V with one temporary
        return (Qt @ V).mul_(-gamma).add_(V)

    dot = lambda A, B: torch.linalg.vecdot(A, B, dim=0)  # column-wise inner products
    b = (1.0 - gamma) * torch.as_tensor(rhs, dtype=torch.float64, device=device)
    X = b.clone()  # the first Neumann term is a good start
    target = tol * (1.0 - gamma)
    active = torch.arange(b.shape[1], device=device)
    iterations = 0
    for _restart in range(4):
        R = b[:, active] - apply(X[:, active])
        keep = R.abs().amax(0) > target
        active, R = active[keep], R[:, keep]
        if not len(active):
            return X, iterations
        x, r_hat, p, v = X[:, active], R.clone(), torch.zeros_like(R), torch.zeros_like(R)
        rho = alpha = omega = torch.ones(len(active), dtype=torch.float64, device=device)
        for it in range(max_iter):
            rho_new = dot(r_hat, R)
            beta = (rho_new / _nonzero(rho)) * (alpha / _nonzero(omega))
            p.addcmul_(v, omega, value=-1.0).mul_(beta).add_(R)  # p = r + β(p − ωv)
            v = apply(p)
            alpha = rho_new / _nonzero(dot(r_hat, v))
            s_ = R.addcmul_(v, alpha, value=-1.0)  # s = r − αv (in place of r)
            t = apply(s_)
            omega = dot(t, s_) / _nonzero(dot(t, t))
            x.addcmul_(p, alpha).addcmul_(s_, omega)
            R = s_.addcmul_(t, omega, value=-1.0)  # r = s − ωt
            rho = rho_new
            iterations = max(iterations, it + 1)
            worst = torch.linalg.vector_norm(R, ord=math.inf, dim=0)
            if (worst <= 0.5 * target).all() or not torch.isfinite(worst).all():
                break
        good = torch.isfinite(x).all(0)
        X[:, active[good]] = x[:, good]
    rest = active  # still uncertified after the restarts: finish with the Neumann series
    residual = b[:, rest] - apply(X[:, rest])
    correction, _ = neumann_solve(Q, residual / (1.0 - gamma), gamma, tol, device=device)
    X[:, rest] += correction
    return X, iterations


def _nonzero(values: Tensor) -> Tensor:
    return torch.where(values.abs() > 1e-300, values, torch.full_like(values, 1e-300))


def _torch_csr(Q: sp.spmatrix, device: str | torch.device) -> Tensor:
    Q = sp.csr_matrix(Q)
    return torch.sparse_csr_tensor(
        torch.as_tensor(Q.indptr, dtype=torch.int64), torch.as_tensor(Q.indices, dtype=torch.int64),
        torch.as_tensor(Q.data, dtype=torch.float64), size=Q.shape, device=device,
    )


def _check_gamma(gamma: float) -> None:
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must lie in (0, 1) for the propagation to converge, got {gamma}")
