"""ResNet-18 in plain torch (He et al. 2016), as a trunk that returns the last feature map.

Two stems:

- ``"imagenet"``: 7×7 stride-2 convolution, BN, ReLU, 3×3 stride-2 max-pool (the standard network;
  224 px → 7×7 map, 28 px → 1×1).
- ``"small"``: 3×3 stride-1 convolution, BN, ReLU and no max-pool (the usual CIFAR adaptation;
  32 px → 4×4 map, 28 px → 4×4).

Module names follow torchvision's ``resnet18`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ``...downsample.0``),
so a torchvision ImageNet state dict loads into the ``"imagenet"`` variant unchanged (its ``fc.*`` keys
are ignored: there is no classifier here).
"""
from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Trunk(nn.Module):
    """ResNet-18 up to ``layer4``: ``[B, in_channels, H, W] -> [B, 512, h, w]``.

    Args:
        in_channels: input channels.
        stem: ``"imagenet"`` (7×7/2 conv + max-pool) or ``"small"`` (3×3/1 conv, no pool).
    """

    out_channels = 512

    def __init__(self, in_channels: int = 3, stem: str = "imagenet") -> None:
        super().__init__()
        if stem not in ("imagenet", "small"):
            raise ValueError(f"ResNet-18 stem must be 'imagenet' or 'small', got {stem!r}")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    #: keys of published checkpoints that have no counterpart here (the ImageNet classifier)
    ignored_weight_prefixes = ("fc.",)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
