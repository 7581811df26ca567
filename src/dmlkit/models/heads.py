"""Embedding heads: a linear map from backbone features to the embedding."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

HEAD_INITS = ("orthogonal", "default")


def l2_normalize(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """``x / max(‖x‖₂, eps)`` along ``dim``."""
    return F.normalize(x, p=2.0, dim=dim, eps=eps)


class EmbeddingHead(nn.Module):
    """``z = W h + b`` (``[B, in_dim] -> [B, out_dim]``), optionally L2-normalised.

    Args:
        in_dim: feature size (``backbone.out_dim``).
        out_dim: embedding size.
        normalize: divide each output row by its L2 norm.
        init: ``"orthogonal"`` (orthogonal W, zero b: STML's and PLM's heads) or ``"default"``
            (``nn.Linear``'s own initialisation).
    """

    def __init__(self, in_dim: int, out_dim: int, normalize: bool = False, init: str = "orthogonal") -> None:
        super().__init__()
        if init not in HEAD_INITS:
            raise ValueError(f"head init must be one of {', '.join(HEAD_INITS)}, got {init!r}")
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"head sizes must be positive, got in_dim={in_dim}, out_dim={out_dim}")
        self.linear = nn.Linear(in_dim, out_dim)
        self.normalize = normalize
        self.out_dim = out_dim
        if init == "orthogonal":
            nn.init.orthogonal_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, features: Tensor) -> Tensor:
        z = self.linear(features)
        return l2_normalize(z) if self.normalize else z
