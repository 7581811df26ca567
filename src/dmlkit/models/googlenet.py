"""GoogLeNet (Inception v1, Szegedy et al. 2015, Table 1) with batch norm, in plain torch, up to inception5b.

The layout is torchvision's ``googlenet`` (every conv is conv without bias → BN(eps=1e-3) → ReLU;
module names ``conv1``, ``inception3a.branch2.1.conv``, ...), so torchvision's ImageNet file
(``googlenet-1378be20.pth``) loads directly; its ``fc.*``/``aux1.*``/``aux2.*`` keys are ignored. Like
torchvision, the "5×5" branch uses a 3×3 kernel (the published weights have that shape). Those weights
expect ``2x − 1`` inputs (torchvision's ``transform_input``), the backbone's ``input_norm="centered"``.

224 and 227 px → 1024×7×7; 256 px → 8×8; 15–32 px → 1×1 (smaller inputs do not fit). Random init: truncated normal (σ = 0.01, ±2σ) for the
convolutions, BN weight 1 and bias 0, as torchvision's.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class BasicConv2d(nn.Module):
    """Conv (no bias) → BatchNorm(eps=1e-3) → ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu_(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four branches, concatenated: 1×1; 1×1 → 3×3; 1×1 → 3×3 (the "5×5"); 3×3 max-pool → 1×1."""

    def __init__(self, cin: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3_reduce, 1), BasicConv2d(c3_reduce, c3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5_reduce, 1), BasicConv2d(c5_reduce, c5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), BasicConv2d(cin, pool_proj, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class GoogLeNetTrunk(nn.Module):
    """GoogLeNet up to inception5b: ``[B, 3, H, W] -> [B, 1024, h, w]``."""

    out_channels = 1024
    ignored_weight_prefixes = ("fc.", "aux1.", "aux2.")

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(in_channels, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        # (in, 1×1, 3×3 reduce, 3×3, "5×5" reduce, "5×5", pool proj): Table 1 of the paper
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=0.01, a=-0.02, b=0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        for module in self.children():
            x = module(x)
        return x
