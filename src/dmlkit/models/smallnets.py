"""SSDML's small networks (seed 002, specs/SSDML.md §2), the from-scratch trunks ``mnist-net`` and
``cifar-net``; and ``pixels``, the raw-pixels "trunk" (no network: the yardstick every embedding is
compared with)."""
from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn


class MnistNet(nn.Sequential):
    """Conv(5×5, 20) → maxpool 2×2/2 → Conv(5×5, 50) → maxpool 2×2/2 → Conv(4×4, 500) → ReLU.

    No padding, no non-linearity between conv1 and conv3 (the MatConvNet LeNet the net comes from).
    28 px: 28 → 24 → 12 → 8 → 4 → 1×1×500. Larger inputs leave a larger last map, which the
    backbone's global pooling averages (32 px → 2×2); inputs below 28 px are rejected at build time.
    """

    min_size = 28
    out_channels = 500
    ignored_weight_prefixes: tuple[str, ...] = ()

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 20, 5)),
            ("pool1", nn.MaxPool2d(2, 2)),
            ("conv2", nn.Conv2d(20, 50, 5)),
            ("pool2", nn.MaxPool2d(2, 2)),
            ("conv3", nn.Conv2d(50, 500, 4)),
            ("relu3", nn.ReLU(inplace=True)),
        ]))


class CifarNet(nn.Sequential):
    """Conv(5×5, 32) → maxpool → ReLU → Conv(5×5, 32) → ReLU → avgpool → Conv(5×5, 64) → ReLU → avgpool
    → Conv(4×4, 64) → ReLU.

    Open choices (specs/SSDML.md §2, MatConvNet CIFAR conventions): the 5×5 convs pad 2 (size kept);
    every pool is 3×3 stride 2 padding 1 (size halves, rounding up), and the average pools ignore the
    padding (``count_include_pad=False``). 32 px: 32 → 16 → 8 → 4, so the last conv sees 4×4 and
    outputs 1×1×64. Other sizes: 25–32 px also end at 1×1; larger inputs leave a larger map, averaged
    by global pooling; below 25 px is rejected at build time.
    """

    min_size = 25
    out_channels = 64
    ignored_weight_prefixes: tuple[str, ...] = ()

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 32, 5, padding=2)),
            ("pool1", nn.MaxPool2d(3, 2, padding=1)),
            ("relu1", nn.ReLU(inplace=True)),
            ("conv2", nn.Conv2d(32, 32, 5, padding=2)),
            ("relu2", nn.ReLU(inplace=True)),
            ("pool2", nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)),
            ("conv3", nn.Conv2d(32, 64, 5, padding=2)),
            ("relu3", nn.ReLU(inplace=True)),
            ("pool3", nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)),
            ("conv4", nn.Conv2d(64, 64, 4)),
            ("relu4", nn.ReLU(inplace=True)),
        ]))


class Pixels(nn.Module):
    """Raw pixels as the feature: ``[B, C, H, W]`` -> ``[B, C·H·W, 1, 1]`` (global pooling is then a no-op).

    ``out_channels`` is fixed by the input size the backbone resizes to."""

    ignored_weight_prefixes: tuple[str, ...] = ()

    def __init__(self, in_channels: int, size: int) -> None:
        super().__init__()
        self.out_channels = in_channels * size * size

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :, None, None]
