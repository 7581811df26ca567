"""The :class:`Backbone` wrapper around a trunk: resize, normalise, run the trunk, pool.

The named backbones and :func:`dmlkit.models.build_backbone` are in :mod:`dmlkit.models.backbones`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

INPUT_NORMS = ("none", "imagenet", "centered", "caffe", "tf")
POOLINGS = ("avg", "max", "avg+max")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)


class Backbone(nn.Module):
    """Resizing, input normalisation, a trunk returning a feature map ``[B, C', h, w]``, and global pooling.

    Attributes:
        name: the registry name.
        out_dim: feature size (the trunk's channel count).
        trunk: the network; its state-dict keys match the published weights.
        input_size: the side inputs are resized to (None: taken as they come).
        weights: the file its starting weights were loaded from; None = random init.
    """

    def __init__(self, name: str, trunk: nn.Module, out_dim: int, *, in_channels: int, input_norm: str,
                 pooling: str, rgb: bool, input_size: int | None = None) -> None:
        super().__init__()
        self.name = name
        self.weights: str | None = None
        self.trunk = trunk
        self.out_dim = out_dim
        self.in_channels = in_channels
        self.input_norm = input_norm
        self.pooling = pooling
        self.input_size = input_size
        self.expand_grey = rgb and in_channels == 1
        if input_norm == "imagenet":
            mean, scale = torch.tensor(_IMAGENET_MEAN), 1.0 / torch.tensor(_IMAGENET_STD)
        elif input_norm == "caffe":
            mean, scale = torch.tensor(_CAFFE_BGR_MEAN[::-1]) / 255.0, torch.full((3,), 255.0)
        elif input_norm == "centered":
            mean, scale = torch.full((3,), 0.5), torch.full((3,), 2.0)
        elif input_norm == "tf":  # (255x - 127) / 128, TF EfficientNet-Lite preprocessing
            mean, scale = torch.full((3,), 127.0 / 255.0), torch.full((3,), 255.0 / 128.0)
        else:
            mean, scale = torch.zeros(1), torch.ones(1)
        # not persistent: they are constants of the wrapper, not weights (and stay out of the EMA)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] -> what the trunk expects (resized to ``input_size``)."""
        size = self.input_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            shrink = min(images.shape[-2:]) > size
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        if self.expand_grey:
            images = images.expand(-1, 3, -1, -1)
        if self.input_norm == "none":
            return images
        images = (images - self.mean) * self.scale
        return images.flip(1) if self.input_norm == "caffe" else images  # caffe: RGB -> BGR

    def feature_map(self, images: Tensor) -> Tensor:
        """The trunk's last feature map ``[B, out_dim, h, w]`` (before pooling)."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"backbone '{self.name}' expects images [B, {self.in_channels}, H, W], got {tuple(images.shape)}; "
                f"build it with in_channels={images.shape[1] if images.dim() == 4 else '...'} to match the data"
            )
        return self.trunk(self.normalize(images))

    def forward(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] -> ``[B, out_dim]``."""
        fmap = self.feature_map(images)
        if self.pooling == "avg":
            return fmap.mean(dim=(2, 3))
        if self.pooling == "max":
            return fmap.amax(dim=(2, 3))
        return fmap.mean(dim=(2, 3)) + fmap.amax(dim=(2, 3))


# ---------------------------------------------------------------------------------------------------
# registry
