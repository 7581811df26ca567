"""Frozen BatchNorm: the ``bn_freeze`` option of STML (BN-Inception) and DRML (every BN of the trunk).

A frozen BN layer is the affine map ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``
with all four tensors stored as buffers: it never updates its statistics, has no trainable parameters,
and stays this way under ``module.train()`` (setting BN layers to eval once is undone by the next
``model.train()`` call, which is why the layers are replaced instead).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class FrozenBatchNorm(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, for inputs ``[B, C, ...]``.

    Its state-dict keys (``weight``, ``bias``, ``running_mean``, ``running_var``) are those of
    ``nn.BatchNorm*d`` without ``num_batches_tracked``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm) -> FrozenBatchNorm:
        """A frozen copy of ``bn`` (its running statistics, and its affine parameters if it has them)."""
        tensors = [t for t in (bn.weight, bn.running_mean) if t is not None]
        frozen = cls(bn.num_features, bn.eps).to(tensors[0].device if tensors else "cpu")
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.view(shape) + shift.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer inside ``module`` by a :class:`FrozenBatchNorm` copy, in place.

    Returns ``module`` (or the frozen replacement when ``module`` itself is a BatchNorm layer).
    """
    if isinstance(module, _BatchNorm):
        return FrozenBatchNorm.from_batchnorm(module)
    for name, child in module.named_children():
        replacement = frozen_batchnorm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module
