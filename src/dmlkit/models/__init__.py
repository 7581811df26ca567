"""Models: backbones, heads, orthogonal projection, EMA update, optimizers.

    >>> from dmlkit.models import build_backbone, EmbeddingHead
    >>> backbone = build_backbone("mnist-net", in_channels=1, image_size=28)
    >>> head = EmbeddingHead(backbone.out_dim, 128, normalize=True)
"""
from __future__ import annotations

from dmlkit.models.backbones import (
    Backbone,
    backbone_spec,
    build_backbone,
    imagenet_weights,
    list_backbones,
    load_trunk_weights,
    register_backbone,
)
from dmlkit.models.batchnorm import FrozenBatchNorm, frozen_batchnorm
from dmlkit.models.ema import ema_update
from dmlkit.models.heads import EmbeddingHead, l2_normalize
from dmlkit.models.optim import AdamP, build_optimizer, build_scheduler
from dmlkit.models.orthogonal import OrthogonalProjection, tangent_projection

__all__ = [
    "AdamP",
    "Backbone",
    "EmbeddingHead",
    "FrozenBatchNorm",
    "OrthogonalProjection",
    "backbone_spec",
    "build_backbone",
    "build_optimizer",
    "build_scheduler",
    "ema_update",
    "frozen_batchnorm",
    "imagenet_weights",
    "l2_normalize",
    "list_backbones",
    "load_trunk_weights",
    "register_backbone",
    "tangent_projection",
]
