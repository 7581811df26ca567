"""Backbones: images ``[B, C, H, W]`` in [0, 1] -> features ``[B, out_dim]``.

Every backbone is a :class:`Backbone`: input normalisation -> trunk (a feature map) -> global pooling.
All of the named ones are plain torch:

=======================  ======  ==========  ========  =================================================
name                     out     input_norm  pooling   notes
=======================  ======  ==========  ========  =================================================
``mnist-net``            500     none        avg       SSDML's MNIST/Fashion-MNIST net (≥ 28 px)
``cifar-net``            64      none        avg       SSDML's CIFAR-10 net (≥ 25 px)
``resnet18-small``       512     none        avg       ResNet-18, 3×3 stem, no max-pool
``resnet18``             512     imagenet    avg+max   ResNet-18, torchvision's weight names
``resnet50``             2048    imagenet    avg+max   ResNet-50 (v1.5), torchvision's weight names
``googlenet``            1024    centered    avg+max   GoogLeNet, torchvision's weight names (≥ 15 px)
``bn-inception``         1024    caffe       avg+max   BN-Inception, Cadene's weight names (224/227/256 px)
``timm:<model>``         any     imagenet    avg+max   lazily imported; needs ``dmlkit[vision]``
``torchvision:<model>``  any     imagenet    avg+max   lazily imported; needs ``dmlkit[vision]``
=======================  ======  ==========  ========  =================================================

Input normalisation (``input_norm``) is part of the backbone because it belongs to the weights:
``none``; ``imagenet`` (RGB mean/std); ``centered`` (2x − 1: what torchvision's GoogLeNet weights see
through its ``transform_input``); ``caffe`` (BGR, 0–255, minus the means [104, 117, 128]: the Caffe
GoogLeNet / Cadene BN-Inception convention of STML and DRML). Any normalisation other than ``none``
works on RGB, so grey input (``in_channels=1``) is repeated to three channels first; GoogLeNet,
BN-Inception and the library models always take three channels.

Pooling ``avg+max`` is GAP + GMP **summed**, as in the STML, PLM and DRML code.

``pretrained`` is ``None`` (random init), a local file (a state dict loaded with
``torch.load(weights_only=True)``: published keys such as torchvision's, or a dmlkit backbone's own
``state_dict()``), or ``"imagenet"``: the published ImageNet file (torchvision's; Cadene's for
BN-Inception) looked up in the torch hub cache (``torch.hub.get_dir()/checkpoints``). Nothing is ever
downloaded; a missing file is an error that says where to fetch it and where to put it.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from dmlkit.models.batchnorm import frozen_batchnorm
from dmlkit.models.bninception import BNInceptionTrunk, supports_size
from dmlkit.models.googlenet import GoogLeNetTrunk
from dmlkit.models.resnet import ResNetTrunk

INPUT_NORMS = ("none", "imagenet", "centered", "caffe")
POOLINGS = ("avg", "max", "avg+max")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)


class Backbone(nn.Module):
    """Input normalisation, a trunk returning a feature map ``[B, C', h, w]``, and global pooling.

    Attributes:
        name: the registry name.
        out_dim: feature size (the trunk's channel count).
        trunk: the network; its state-dict keys match the published weights.
        weights: the file its starting weights were loaded from; None = random init.
    """

    def __init__(self, name: str, trunk: nn.Module, out_dim: int, *, in_channels: int, input_norm: str,
                 pooling: str, rgb: bool) -> None:
        super().__init__()
        self.name = name
        self.weights: str | None = None
        self.trunk = trunk
        self.out_dim = out_dim
        self.in_channels = in_channels
        self.input_norm = input_norm
        self.pooling = pooling
        self.expand_grey = rgb and in_channels == 1
        if input_norm == "imagenet":
            mean, scale = torch.tensor(_IMAGENET_MEAN), 1.0 / torch.tensor(_IMAGENET_STD)
        elif input_norm == "caffe":
            mean, scale = torch.tensor(_CAFFE_BGR_MEAN[::-1]) / 255.0, torch.full((3,), 255.0)
        elif input_norm == "centered":
            mean, scale = torch.full((3,), 0.5), torch.full((3,), 2.0)
        else:
            mean, scale = torch.zeros(1), torch.ones(1)
        # not persistent: they are constants of the wrapper, not weights (and stay out of the EMA)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] -> what the trunk expects."""
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
# SSDML's small networks (seed 002, specs/SSDML.md §2)


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


# ---------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class _Spec:
    build: Callable[[int], nn.Module]  # trunk channels in -> trunk (with out_channels, ignored_weight_prefixes)
    input_norm: str
    pooling: str
    min_size: int
    rgb: bool  # the trunk always takes three channels
    imagenet_url: str | None  # where the ImageNet weights are published; the cache holds them under its basename
    description: str
    supports_size: Callable[[int], bool] | None = None  # finer size check than min_size


_TORCHVISION = "https://download.pytorch.org/models/"
_CADENE = "http://data.lip6.fr/cadene/pretrainedmodels/"

_REGISTRY: dict[str, _Spec] = {
    "mnist-net": _Spec(MnistNet, "none", "avg", MnistNet.min_size, False, None,
                       "SSDML's MNIST/Fashion-MNIST conv net up to Conv3+ReLU, 500-d"),
    "cifar-net": _Spec(CifarNet, "none", "avg", CifarNet.min_size, False, None,
                       "SSDML's CIFAR-10 conv net up to Conv4+ReLU, 64-d"),
    "resnet18-small": _Spec(lambda c: ResNetTrunk(18, c, stem="small"), "none", "avg", 8, False, None,
                            "ResNet-18 for small images (3x3 stem, no max-pool), 512-d"),
    "resnet18": _Spec(lambda c: ResNetTrunk(18, c), "imagenet", "avg+max", 28, False,
                      _TORCHVISION + "resnet18-f37072fd.pth", "ResNet-18 (torchvision's weight names), GAP+GMP, 512-d"),
    "resnet50": _Spec(lambda c: ResNetTrunk(50, c), "imagenet", "avg+max", 28, False,
                      _TORCHVISION + "resnet50-0676ba61.pth", "ResNet-50 (torchvision's weight names), GAP+GMP, 2048-d"),
    "googlenet": _Spec(GoogLeNetTrunk, "centered", "avg+max", 15, True, _TORCHVISION + "googlenet-1378be20.pth",
                       "GoogLeNet (torchvision's weight names), GAP+GMP, 1024-d"),
    "bn-inception": _Spec(BNInceptionTrunk, "caffe", "avg+max", 32, True, _CADENE + "bn_inception-52deb4733.pth",
                          "BN-Inception (Cadene's weight names), GAP+GMP, 1024-d", supports_size),
}

#: ``<library>:<model>`` names: any convolutional timm / torchvision model (the optional vision extra)
_LIBRARY_PATTERNS = {
    "timm:<model>": "any convolutional timm model, e.g. timm:resnet50, GAP+GMP [needs dmlkit[vision]]",
    "torchvision:<model>": "any convolutional torchvision model, e.g. torchvision:vgg16_bn, GAP+GMP [needs dmlkit[vision]]",
}


def _library_spec(name: str) -> _Spec:
    from dmlkit.models import vision

    library, model_name = name.split(":", 1)
    if library not in vision.LIBRARIES or not model_name:
        raise ValueError(f"unknown backbone {name!r}; library backbones are spelled timm:<model> or torchvision:<model>")
    return _Spec(lambda c: vision.build_trunk(library, model_name), "imagenet", "avg+max", 32, True, None, name)


def list_backbones() -> dict[str, str]:
    """``name -> one-line description`` of every backbone :func:`build_backbone` knows (all plain torch),
    plus the ``timm:<model>`` / ``torchvision:<model>`` patterns."""
    return {**{name: spec.description for name, spec in _REGISTRY.items()}, **_LIBRARY_PATTERNS}


def build_backbone(name: str, in_channels: int = 1, image_size: int = 28, pretrained: str | os.PathLike | None = None,
                   *, pooling: str | None = None, input_norm: str | None = None, bn_freeze: bool = False) -> Backbone:
    """Build a backbone ``[B, in_channels, H, W]`` in [0, 1] -> ``[B, out_dim]``.

    Args:
        name: one of :func:`list_backbones`, or ``timm:<model>`` / ``torchvision:<model>``.
        in_channels: 1 (grey) or 3 (colour).
        image_size: side of the input images; checked against the smallest size the net accepts.
        pretrained: ``None`` (random init), a local state-dict file, or ``"imagenet"`` (the torch hub
            cache; never downloads).
        pooling: ``avg``, ``max`` or ``avg+max`` (summed); default per backbone (module docstring).
        input_norm: ``none``, ``imagenet``, ``centered`` or ``caffe``; default per backbone.
        bn_freeze: replace every BatchNorm by a frozen copy (after loading the weights).
    """
    if ":" in name:
        spec = _library_spec(name)
    elif name in _REGISTRY:
        spec = _REGISTRY[name]
    else:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 (grey) or 3 (colour), got {in_channels}")
    if image_size < spec.min_size:
        raise ValueError(f"backbone '{name}' needs images of at least {spec.min_size} px, got image_size={image_size}; "
                         "resize the data or pick another backbone")
    if spec.supports_size is not None and not spec.supports_size(image_size):
        raise ValueError(f"backbone '{name}' cannot take {image_size} px images (its stride-2 blocks need even feature "
                         "maps); use e.g. 224, 227 or 256")
    pooling = spec.pooling if pooling is None else pooling
    input_norm = spec.input_norm if input_norm is None else input_norm
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {input_norm!r}")
    rgb = spec.rgb or input_norm != "none"
    trunk = spec.build(3 if rgb else in_channels)
    weights = None if pretrained is None else _weights_path(name, spec, pretrained)
    if weights is not None:
        load_trunk_weights(trunk, weights)
    if bn_freeze:
        trunk = frozen_batchnorm(trunk)
    backbone = Backbone(name, trunk, int(trunk.out_channels), in_channels=in_channels, input_norm=input_norm,
                        pooling=pooling, rgb=rgb)
    backbone.weights = None if weights is None else str(weights)  # where the starting weights came from
    return backbone


def _weights_path(name: str, spec: _Spec, pretrained: str | os.PathLike) -> Path:
    if str(pretrained) != "imagenet":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file for backbone '{name}' not found: {path}")
        return path
    if spec.imagenet_url is None:
        raise ValueError(f"backbone '{name}' has no known ImageNet weights file; pass pretrained='path/to/weights.pth'")
    path = Path(torch.hub.get_dir()) / "checkpoints" / spec.imagenet_url.rsplit("/", 1)[1]
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for backbone '{name}' are not in the torch hub cache: {path} is missing. dmlkit never "
            f"downloads; fetch {spec.imagenet_url} into that folder (or pass pretrained='path/to/weights.pth')"
        )
    return path


def load_trunk_weights(trunk: nn.Module, path: str | os.PathLike) -> None:
    """Load a state dict from ``path`` into ``trunk`` (``torch.load(weights_only=True)``).

    Accepted layouts: the trunk's own keys (e.g. torchvision's), a dmlkit backbone's keys (``trunk.``
    prefix), either one wrapped under ``state_dict``/``model`` or prefixed ``module.`` (DataParallel).
    Classifier keys the trunk lists in ``ignored_weight_prefixes`` are dropped; tensors stored with an
    extra leading singleton dimension (Cadene's BN-Inception file stores BN vectors as ``[1, C]``) are
    squeezed; any other mismatch is a ``ValueError`` naming the keys.
    """
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before it refuses a file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (pickle.UnpicklingError: code in the pickle; a truncated or foreign file)
        raise ValueError(f"pretrained weights {path} are not a plain state dict (tensors only); it may be truncated, "
                         f"from another program, or crafted to run code ({type(error).__name__}); "
                         "pass a weights file saved with torch.save(model.state_dict())") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")  # noqa: TRY004
    for prefix in ("module.", "trunk."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    ignored = tuple(getattr(trunk, "ignored_weight_prefixes", ()))
    state = {key: value for key, value in state.items() if not (ignored and key.startswith(ignored))}
    own = trunk.state_dict()
    for key, value in state.items():
        if key in own and value.dim() == own[key].dim() + 1 and value.shape[0] == 1 and value.shape[1:] == own[key].shape:
            state[key] = value[0]
    result = trunk.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights in {path} do not fit this backbone: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )
