"""An orthonormal projection L ∈ R^{in×out}, LᵀL = I (SSDML's metric LLᵀ, seed 002 §"Proposed loss").

SSDML keeps L on the Stiefel manifold St(in, out). The paper minimises over L with Manopt's Riemannian
conjugate gradients (10 iterations per batch, specs/SSDML.md §6); dmlkit's SSDML does the same by default
(``l_solver="rcg"``: :func:`dmlkit.losses.angular_triplet.minimize_stiefel`, built on
:func:`tangent_projection` and :func:`qr_retraction` below). This module also gives the simpler
equivalent listed there as option 3 (SSDML's ``l_solver="retraction"``): a Euclidean optimizer step on
L, optionally of the Riemannian gradient, followed by a retraction back onto the manifold (QR or polar)
after every step::

    loss.backward()
    projection.project_gradient()   # optional: G <- G - L sym(LᵀG), the Riemannian gradient
    optimizer.step()
    projection.retract()            # L <- qf(L), so ‖LᵀL - I‖ stays below 1e-5

Retractions are computed in float64, so a float32 L stays orthonormal to about 1e-7.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

RETRACTIONS = ("qr", "polar")


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


def tangent_projection(L: Tensor, G: Tensor) -> Tensor:
    """Project ``G`` onto the tangent space of the Stiefel manifold at ``L``: ``G - L sym(LᵀG)``."""
    return G - L @ _sym(L.transpose(-1, -2) @ G)


def qr_retraction(X: Tensor) -> Tensor:
    """``qf(X)``: the Q factor of the reduced QR of ``X [in, out]`` with diag(R) > 0 (unique)."""
    Q, R = torch.linalg.qr(X.double(), mode="reduced")
    sign = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (Q * sign.unsqueeze(-2)).to(X.dtype)


def polar_retraction(X: Tensor) -> Tensor:
    """``X (XᵀX)^{-1/2} = U Vᵀ`` from the thin SVD ``X = U S Vᵀ``: the orthonormal matrix closest to X."""
    U, _, Vh = torch.linalg.svd(X.double(), full_matrices=False)
    return (U @ Vh).to(X.dtype)


def random_orthonormal(in_dim: int, out_dim: int, generator: torch.Generator | None = None) -> Tensor:
    """A random ``[in_dim, out_dim]`` matrix with orthonormal columns (sign-fixed QR of a Gaussian)."""
    return qr_retraction(torch.randn(in_dim, out_dim, generator=generator))


class OrthogonalProjection(nn.Module):
    """``z ↦ zL``: ``[B, in_dim] -> [B, out_dim]`` (each row is ``Lᵀz_i``), with ``L = self.weight``,
    ``LᵀL = I``.

    Then ``‖Lᵀ(z_i − z_j)‖² = (z_i − z_j)ᵀLLᵀ(z_i − z_j)``, SSDML's δ²_L.

    Args:
        in_dim: d, the input size.
        out_dim: l ≤ d, the projected size.
        generator: random source for the orthonormal initialisation.
    """

    def __init__(self, in_dim: int, out_dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 1 <= out_dim <= in_dim:
            raise ValueError(f"an orthonormal L needs 1 <= out_dim <= in_dim, got in_dim={in_dim}, out_dim={out_dim}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.weight = nn.Parameter(random_orthonormal(in_dim, out_dim, generator))

    def forward(self, z: Tensor) -> Tensor:
        return z @ self.weight

    @torch.no_grad()
    def retract(self, method: str = "qr") -> None:
        """Put L back on the manifold after an optimizer step: ``L ← qf(L)`` or its polar factor."""
        if method not in RETRACTIONS:
            raise ValueError(f"retraction must be one of {', '.join(RETRACTIONS)}, got {method!r}")
        retraction = qr_retraction if method == "qr" else polar_retraction
        self.weight.copy_(retraction(self.weight))

    @torch.no_grad()
    def project_gradient(self) -> None:
        """Replace ``L.grad`` (Euclidean) by the Riemannian gradient ``G − L sym(LᵀG)``; no-op without grad."""
        if self.weight.grad is not None:
            self.weight.grad.copy_(tangent_projection(self.weight, self.weight.grad))

    @torch.no_grad()
    def orthogonality_error(self) -> float:
        """``max |LᵀL − I|``."""
        L = self.weight.double()
        return float((L.T @ L - torch.eye(self.out_dim, dtype=L.dtype, device=L.device)).abs().max())

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"
