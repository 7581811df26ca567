"""ImageNet trunks from torchvision or timm, imported lazily (the optional ``vision`` extra): ResNet-50.

(GoogLeNet, BN-Inception and ResNet-18 are plain torch: :mod:`dmlkit.models.googlenet`,
:mod:`dmlkit.models.bninception`, :mod:`dmlkit.models.resnet`.)

Each trunk keeps the library's own module names, so the published state dicts load unchanged through
:func:`dmlkit.models.backbones.load_trunk_weights`; the classifier is removed and its keys ignored.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from torch import Tensor, nn

#: children that belong to the classifier, not the trunk
_HEAD_CHILDREN = {"avgpool", "global_pool", "dropout", "fc", "aux1", "aux2", "head"}


class StagedTrunk(nn.Module):
    """Runs the named children of an ImageNet classifier, in order, up to its last feature map."""

    ignored_weight_prefixes = ("fc.", "aux1.", "aux2.")

    def __init__(self, model: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stage_names = [name for name, _ in model.named_children() if name not in _HEAD_CHILDREN]
        for name in self.stage_names:
            self.add_module(name, getattr(model, name))

    def forward(self, x: Tensor) -> Tensor:
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


def _import(backbone: str, module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"backbone '{backbone}' needs the optional 'vision' extra: pip install 'dmlkit[vision]'") from None


def build_trunk(name: str) -> nn.Module:
    """The randomly initialised trunk of ``name`` (``resnet50``)."""
    if name == "resnet50":
        try:
            models = importlib.import_module("torchvision.models")
            model = models.resnet50(weights=None)
        except ImportError:
            timm = _import(name, "timm")
            model = timm.create_model("resnet50", pretrained=False)
        return StagedTrunk(model, 2048)
    raise ValueError(f"no ImageNet trunk named {name!r}")
