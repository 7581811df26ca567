"""PLM's losses (seed 003, Sec. 3.6, Eqs. 6-9) and its learnable proxies with orthonormal bases (Sec. 3.4).

Parameter routing (Sec. 3.6.4; spec PLM.md §6): the network θ is affected only by the point-point and
proxy-point losses, the proxies ρ and their bases Ψ only by the proxy-point and proxy-neighbourhood
losses. The method realises this by passing the similarities as detached targets: then ρ gets gradient
only through the distance of Eq. 7 and Ψ only through cos θ of Eq. 8.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

REDUCTIONS = ("sum", "mean")
PARAMETRISATIONS = ("qr", "orthogonal", "retract")


def _reduce(terms: Tensor, reduction: str) -> Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction='{reduction}' is not one of {', '.join(REDUCTIONS)}")
    return terms.sum() if reduction == "sum" else terms.mean()


def _distances(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances ``[A, B]``, with zero gradient (not NaN) at coincident points."""
    return (a.unsqueeze(1) - b.unsqueeze(0)).square().sum(-1).clamp_min(1e-12).sqrt()


def point_point_loss(z: Tensor, similarity: Tensor, delta: float = 2.0, reduction: str = "sum") -> Tensor:
    """Eq. 6: ``Σ_i Σ_{j≠i} (δ (1 - s_ij) - ||z_i - z_j||)²``.

    Args:
        z: ``[B, D]`` network embeddings ``f_θ``.
        similarity: ``[B, B]`` target ``s`` (Eq. 5); used as given (detach it to make it a target).
    """
    if similarity.shape != (z.shape[0], z.shape[0]):
        raise ValueError(f"similarity must be [B, B] = {[z.shape[0]] * 2}, got {list(similarity.shape)}")
    off = ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    terms = (delta * (1.0 - similarity) - _distances(z, z)).square()
    return _reduce(terms[off], reduction)


def proxy_point_loss(
    z: Tensor, proxies: Tensor, similarity: Tensor, delta: float = 2.0, reduction: str = "sum"
) -> Tensor:
    """Eq. 7: ``Σ_i Σ_j (δ (1 - s(x_i, ρ_j)) - ||z_i - ρ_j||)²``.

    Args:
        z: ``[B, D]`` network embeddings. proxies: ``[N_rho, D]`` proxy locations (normalised ``ρ̂`` by default).
        similarity: ``[B, N_rho]`` proxy-point similarity.
    """
    if similarity.shape != (z.shape[0], proxies.shape[0]):
        raise ValueError(
            f"similarity must be [B, N_rho] = {[z.shape[0], proxies.shape[0]]}, got {list(similarity.shape)}"
        )
    return _reduce((delta * (1.0 - similarity) - _distances(z, proxies)).square(), reduction)


def proxy_neighbourhood_loss(similarity: Tensor, cosines: Tensor, reduction: str = "sum") -> Tensor:
    """Eq. 8: ``Σ_i Σ_j Σ_k (s(x_i, ρ_j) - cos θ_{k,j,i})²``.

    Args:
        similarity: ``[B, N_rho]``. cosines: ``[B, N_rho, m]`` from
            :func:`dmlkit.targets.manifold.basis_angle_cosine`.
    """
    if cosines.shape[:2] != similarity.shape:
        raise ValueError(
            f"cosines must be [B, N_rho, m] matching similarity {list(similarity.shape)}, got {list(cosines.shape)}"
        )
    return _reduce((similarity.unsqueeze(-1) - cosines).square(), reduction)


class _Orthonormal(nn.Module):
    """Batch of D x m matrices on the Stiefel manifold through torch's orthogonal parametrisation."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init.clone())
        torch.nn.utils.parametrizations.orthogonal(self, "weight")


class ManifoldProxies(nn.Module):
    """``N_rho`` proxies ``ρ_j ∈ R^D`` with orthonormal bases ``Ψ_j ∈ R^{D×m}`` (Sec. 3.4).

    Args:
        n_proxies, dim, m: ``N_rho``, D and the piece dimension.
        parametrisation: how ``Ψ_jᵀ Ψ_j = I`` is kept (spec §5):
            ``"qr"`` (default) stores unconstrained ``W_j`` and returns ``Q_j diag(sign diag R_j)`` of a batched QR;
            ``"orthogonal"`` uses ``torch.nn.utils.parametrizations.orthogonal`` on the batch;
            ``"retract"`` takes a Euclidean step on ``Ψ`` and :meth:`retract` (QR) after each optimiser step.
        normalize: return ``ρ̂_j = ρ_j / ||ρ_j||`` from :meth:`locations` (spec §5 default).
    """

    def __init__(
        self,
        n_proxies: int,
        dim: int,
        m: int,
        parametrisation: str = "qr",
        normalize: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(
                f"proxy parametrisation '{parametrisation}' is not one of {', '.join(PARAMETRISATIONS)}"
            )
        if m > dim:
            raise ValueError(f"proxy basis dimension m={m} exceeds the embedding dimension {dim}")
        self.parametrisation = parametrisation
        self.normalize = normalize
        self.location = nn.Parameter(
            torch.nn.functional.normalize(torch.randn(n_proxies, dim, generator=generator), dim=1)
        )
        init = torch.linalg.qr(torch.randn(n_proxies, dim, m, generator=generator)).Q
        if parametrisation == "orthogonal":
            self.stiefel = _Orthonormal(init)
        else:
            self.raw_basis = nn.Parameter(init)

    def locations(self) -> Tensor:
        """``[N_rho, D]``: ``ρ̂`` if normalising, else ``ρ``."""
        return torch.nn.functional.normalize(self.location, dim=1) if self.normalize else self.location

    def bases(self) -> Tensor:
        """``[N_rho, D, m]`` orthonormal bases ``Ψ``."""
        if self.parametrisation == "orthogonal":
            return self.stiefel.weight
        if self.parametrisation == "retract":
            return self.raw_basis
        q, r = torch.linalg.qr(self.raw_basis)
        signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
        return q * torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(-2)

    @torch.no_grad()
    def retract(self) -> None:
        """QR retraction of the stored bases back onto the Stiefel manifold (for ``"retract"``; harmless for ``"qr"``)."""
        if self.parametrisation == "orthogonal":
            return
        q, r = torch.linalg.qr(self.raw_basis)
        signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
        self.raw_basis.copy_(q * torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(-2))

    @torch.no_grad()
    def initialise(self, locations: Tensor) -> None:
        """Set ``ρ`` to given points (spec §5 default: momentum embeddings of N_rho random training images)."""
        if locations.shape != self.location.shape:
            raise ValueError(
                f"proxy locations must be {list(self.location.shape)}, got {list(locations.shape)}"
            )
        self.location.copy_(locations)
