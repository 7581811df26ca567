"""Any convolutional torchvision or timm model as a trunk, imported lazily (the optional ``vision`` extra).

``build_backbone("timm:<model>")`` or ``build_backbone("torchvision:<model>")`` builds the named model
with random weights (never downloading) and removes its classifier; the result returns the last
feature map and keeps the library's own module names, so that library's published state dicts load
through ``pretrained="path/to/weights.pth"`` (classifier keys are ignored).

The backbones the papers use (GoogLeNet, BN-Inception, ResNet-18/50) are plain torch and need neither
library: :mod:`dmlkit.models.googlenet`, :mod:`dmlkit.models.bninception`, :mod:`dmlkit.models.resnet`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor, nn

LIBRARIES = ("timm", "torchvision")
#: children / key prefixes that belong to a classifier, not the trunk
_HEAD_CHILDREN = ("avgpool", "global_pool", "dropout", "fc", "aux1", "aux2", "AuxLogits", "head", "classifier",
                  "last_linear")
_HEAD_PREFIXES = tuple(f"{name}." for name in _HEAD_CHILDREN)


class StagedTrunk(nn.Module):
    """Runs the named children of a torchvision classifier, in order, up to its last feature map."""

    ignored_weight_prefixes = _HEAD_PREFIXES

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stage_names = [name for name, _ in model.named_children() if name not in _HEAD_CHILDREN]
        for name in self.stage_names:
            self.add_module(name, getattr(model, name))
        self.out_channels = _probe_channels(self)

    def forward(self, x: Tensor) -> Tensor:
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


@torch.no_grad()
def _probe_channels(trunk: nn.Module, size: int = 224) -> int:
    """Channels of the trunk's output, from one forward pass of a blank image in eval mode."""
    was_training = trunk.training
    fmap = trunk.eval()(torch.zeros(1, 3, size, size))
    trunk.train(was_training)
    if fmap.dim() != 4:
        raise ValueError(f"the model returns {tuple(fmap.shape)}, not a feature map [B, C, h, w]; "
                         "only convolutional models can be backbones")
    return int(fmap.shape[1])


def _import(backbone: str, module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"backbone '{backbone}' needs the optional 'vision' extra: pip install 'dmlkit[vision]'") from None


def build_trunk(library: str, model_name: str) -> nn.Module:
    """The randomly initialised trunk of ``library``'s ``model_name``, with attribute ``out_channels``."""
    name = f"{library}:{model_name}"
    if library == "timm":
        timm = _import(name, "timm")
        # no classifier and no pooling: forward() returns the unpooled feature map
        model = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="")
        model.ignored_weight_prefixes = _HEAD_PREFIXES
        model.out_channels = _probe_channels(model)
        return model
    if library == "torchvision":
        models = _import(name, "torchvision.models")
        kwargs = {"aux_logits": False, "init_weights": True} if model_name in ("googlenet", "inception_v3") else {}
        return StagedTrunk(models.get_model(model_name, weights=None, **kwargs))
    raise ValueError(f"unknown model library {library!r} in backbone '{name}'; use one of: {', '.join(LIBRARIES)}")
