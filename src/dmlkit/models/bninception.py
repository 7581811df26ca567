"""BN-Inception (Ioffe & Szegedy 2015, Fig. 5 / the "Inception-BN" net) in plain torch, up to inception_5b.

Neither torchvision nor timm provides it; STML (``bn_freeze``) and DRML use Cadene's ImageNet port
(``bn_inception-52deb4733.pth``: BGR input in 0–255 minus [104, 117, 128], i.e. ``input_norm="caffe"``).
Module names here are that port's flat names (``conv1_7x7_s2``, ``conv1_7x7_s2_bn``,
``inception_3a_double_3x3_1``, ...), so its state dict loads directly (``last_linear.*`` is ignored).
Every unit is conv (with bias) → BN → ReLU; the BN momentum is torch's default (0.1), not the port's
0.9, which only matters if the BN layers are trained.

224 px → 1024×7×7; 227 px → 7×7; 256 px → 8×8; 32 px → 1×1. The two stride-2 blocks (3c, 4e) concatenate
a stride-2 conv (size ⌈s/2⌉) with a ceil-mode 3×3/2 max-pool (size ⌈(s−1)/2⌉), so their input must be
even (or 2): sizes such as 40–62 px do not fit, see :func:`supports_size`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Block(NamedTuple):
    name: str
    in_channels: int
    c1x1: int  # 0: no 1×1 branch (the two stride-2 "reduction" blocks)
    c3x3: tuple[int, int]  # (reduce, out)
    double_3x3: tuple[int, int]  # (reduce, out) of the two stacked 3×3 convs
    pool: str  # "avg" (3×3/1), "max" (3×3/1) or "max-s2" (3×3/2, no projection)
    pool_proj: int  # 0: pooled input passes through unprojected
    stride: int


_BLOCKS = (
    _Block("3a", 192, 64, (64, 64), (64, 96), "avg", 32, 1),
    _Block("3b", 256, 64, (64, 96), (64, 96), "avg", 64, 1),
    _Block("3c", 320, 0, (128, 160), (64, 96), "max-s2", 0, 2),
    _Block("4a", 576, 224, (64, 96), (96, 128), "avg", 128, 1),
    _Block("4b", 576, 192, (96, 128), (96, 128), "avg", 128, 1),
    _Block("4c", 576, 160, (128, 160), (128, 160), "avg", 128, 1),
    _Block("4d", 608, 96, (128, 192), (160, 192), "avg", 128, 1),
    _Block("4e", 608, 0, (128, 192), (192, 256), "max-s2", 0, 2),
    _Block("5a", 1056, 352, (192, 320), (160, 224), "avg", 128, 1),
    _Block("5b", 1024, 352, (192, 320), (192, 224), "max", 128, 1),
)


def _conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _ceil_pool_size(size: int) -> int:
    """3×3 stride-2 max-pool, ceil mode, no padding (torch drops a window that would start outside)."""
    out = math.ceil((size - 3) / 2) + 1
    return out - 1 if (out - 1) * 2 >= size else out


def supports_size(size: int) -> bool:
    """Whether a ``size × size`` input passes through the trunk (both stride-2 blocks line up)."""
    s = _ceil_pool_size(_ceil_pool_size(_conv_size(size, 7, 2, 3)))
    for _ in range(2):  # blocks 3c and 4e
        conv, pool = _conv_size(s, 3, 2, 1), _ceil_pool_size(s)
        if s < 2 or conv != pool:
            return False
        s = conv
    return True


class BNInceptionTrunk(nn.Module):
    """BN-Inception up to inception_5b: ``[B, 3, H, W] -> [B, 1024, h, w]``."""

    out_channels = 1024
    ignored_weight_prefixes = ("last_linear.",)

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self._unit("conv1_7x7_s2", in_channels, 64, 7, 2)
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3)
        for block in _BLOCKS:
            prefix = f"inception_{block.name}_"
            if block.c1x1:
                self._unit(prefix + "1x1", block.in_channels, block.c1x1, 1)
            self._unit(prefix + "3x3_reduce", block.in_channels, block.c3x3[0], 1)
            self._unit(prefix + "3x3", block.c3x3[0], block.c3x3[1], 3, block.stride)
            self._unit(prefix + "double_3x3_reduce", block.in_channels, block.double_3x3[0], 1)
            self._unit(prefix + "double_3x3_1", block.double_3x3[0], block.double_3x3[1], 3)
            self._unit(prefix + "double_3x3_2", block.double_3x3[1], block.double_3x3[1], 3, block.stride)
            if block.pool_proj:
                self._unit(prefix + "pool_proj", block.in_channels, block.pool_proj, 1)

    def _unit(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2))
        self.add_module(name + "_bn", nn.BatchNorm2d(cout))

    def _run(self, name: str, x: Tensor) -> Tensor:
        return F.relu(self.get_submodule(name + "_bn")(self.get_submodule(name)(x)), inplace=True)

    def _block(self, block: _Block, x: Tensor) -> Tensor:
        prefix = f"inception_{block.name}_"
        branches = [self._run(prefix + "1x1", x)] if block.c1x1 else []
        branches.append(self._run(prefix + "3x3", self._run(prefix + "3x3_reduce", x)))
        double = self._run(prefix + "double_3x3_1", self._run(prefix + "double_3x3_reduce", x))
        branches.append(self._run(prefix + "double_3x3_2", double))
        if block.pool == "avg":
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        elif block.pool == "max":
            pooled = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
        else:
            pooled = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        branches.append(self._run(prefix + "pool_proj", pooled) if block.pool_proj else pooled)
        return torch.cat(branches, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self._run("conv1_7x7_s2", x), 3, stride=2, ceil_mode=True)
        x = self._run("conv2_3x3", self._run("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        for block in _BLOCKS:
            x = self._block(block, x)
        return x
