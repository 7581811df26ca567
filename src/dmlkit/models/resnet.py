"""ResNet-18 and ResNet-50 in plain torch (He et al. 2016), as trunks that return the last feature map.

Two stems:

- ``"imagenet"``: 7×7 stride-2 convolution, BN, ReLU, 3×3 stride-2 max-pool (the standard network;
  224 px → 7×7 map, 28 px → 1×1).
- ``"small"``: 3×3 stride-1 convolution, BN, ReLU and no max-pool (the usual CIFAR adaptation;
  32 px → 4×4 map, 28 px → 4×4).

Module names follow torchvision's ``resnet18``/``resnet50`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``...downsample.0``; ResNet-50 strides in its 3×3 convs, "v1.5"), so torchvision's ImageNet state dicts
load into the ``"imagenet"`` variants unchanged. Classifier keys (``fc.*``) and the SwAV
self-supervised heads (``projection_head.*``, ``prototypes.*``, SLADE's default initialisation) are ignored.
"""
from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN projection) shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride) → 1×1 expand (×4), with a shortcut (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNetTrunk(nn.Module):
    """ResNet up to ``layer4``: ``[B, in_channels, H, W] -> [B, out_channels, h, w]``.

    Args:
        depth: 18 (512 channels out) or 50 (2048).
        in_channels: input channels.
        stem: ``"imagenet"`` (7×7/2 conv + max-pool) or ``"small"`` (3×3/1 conv, no pool).
    """

    #: keys of published checkpoints that have no counterpart here
    ignored_weight_prefixes = ("fc.", "projection_head.", "prototypes.")

    def __init__(self, depth: int = 18, in_channels: int = 3, stem: str = "imagenet") -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        if stem not in ("imagenet", "small"):
            raise ValueError(f"ResNet stem must be 'imagenet' or 'small', got {stem!r}")
        block, counts = _DEPTHS[depth]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
            stride = 1 if index == 1 else 2
            blocks = [block(in_planes, planes, stride)]
            in_planes = planes * block.expansion
            blocks += [block(in_planes, planes) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.out_channels = in_planes
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
