"""Augmented views on batched tensors (kornia), and the deterministic test-time transform.

``Views(preset)(images)`` maps ``[B, C, H, W]`` in [0, 1] to ``[n_views * B, C, S, S]`` ordered
``[all view-1 ; all view-2 ; ...]``: row ``v * B + i`` is view ``v`` of image ``i``. Every row gets
its own random parameters. Output stays in [0, 1]; ImageNet mean/std normalisation belongs to the
backbone wrappers. Randomness comes from torch's global RNG (kornia has no generator argument);
the engine seeds it.

Presets (the stored size S0 is what the readers store, see :func:`dmlkit.data.images.stored_size`):

- ``grey28`` (MNIST, Fashion-MNIST, digits; stored 28x28, digits 8x8): RandomResizedCrop back to
  the input size with scale (0.5, 1) and ratio (3/4, 4/3), then a small affine (rotation up to
  10 degrees, translation up to 10 %, p = 0.5). No horizontal flip: it changes a digit's identity
  (2 vs 5 style mirroring) and Fashion-MNIST items are centred and aligned. Eval: identity.
- ``colour32`` (CIFAR-10; stored 32x32): random crop with 4-pixel zero padding, horizontal flip,
  colour jitter (brightness/contrast/saturation 0.4, hue 0.1, p = 0.8). Eval: identity.
- ``imagenet224`` (CUB, Cars, SOP, In-shop, folders; stored 256x256): RandomResizedCrop(224,
  scale (0.16, 1), ratio (3/4, 4/3)) + horizontal flip (STML/PLM/SLADE/DRML, no colour jitter).
  Eval: center crop 224. ``crop_size=227`` gives the Inception setting of STML/PLM.

A dataset declares which augmentations keep an image's class (``DatasetRecords.augmentations``,
names in :data:`AUGMENTATIONS`); ``Views(..., augmentations=...)`` leaves the others out of its
preset, so every method's views respect it (glyphs: no ``hflip``, since mirroring turns b into d).

Strength (``Views(..., strength=s)``, the run setting ``view_strength``) scales every magnitude of the
preset linearly: the crop's smallest area fraction ``lo`` becomes ``lo - (1 - lo)(s - 1)`` (at least
0.01) and its aspect-ratio range ``(r0, r1)`` becomes ``(r0^s, r1^s)``; rotation ``10 s`` degrees (at
most 180), translation ``0.1 s`` (at most 1), crop padding ``round(4 s)`` px, colour jitter ``0.4 s``
(hue ``0.1 s``, at most 0.5). Probabilities (affine 0.5, flip 0.5, jitter 0.8) do not change. ``s = 1``
is the preset as above, bit for bit; ``s = 0`` is no augmentation: ``grey28``/``colour32`` views are the
input, ``imagenet224`` views the input resized to the crop size.
"""
from __future__ import annotations

import math

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn

PRESETS = ("grey28", "colour32", "imagenet224")
#: augmentation names a dataset can declare class-keeping: random (resized) crop, small rotation and
#: translation, horizontal flip, colour jitter
AUGMENTATIONS = frozenset({"crop", "affine", "hflip", "colour"})
MIN_CROP_SCALE = 0.01  #: the smallest crop area fraction a strength above 1 can reach


def preset_for(data) -> str:
    """The augmentation preset for a :class:`DatasetRecords` or :class:`DMLDataset`:
    grey → ``grey28``, small colour (≤ 64 px) → ``colour32``, otherwise ``imagenet224``."""
    if int(data.channels) == 1:
        return "grey28"
    return "colour32" if int(data.image_size) <= 64 else "imagenet224"


class Views(nn.Module):
    """Random augmented views of a batch.

    Args:
        preset: ``grey28`` | ``colour32`` | ``imagenet224``.
        n_views: views per image.
        crop_size: output side for ``imagenet224`` (default 224); ``grey28``/``colour32`` keep the
            input size.
        augmentations: the class-keeping augmentations the dataset declares (None = all of
            :data:`AUGMENTATIONS`); the preset's others are left out.
        strength: scale of every augmentation's magnitude (>= 0; 1 = the preset, 0 = none; see the
            module docstring).
    """

    def __init__(self, preset: str, n_views: int = 2, crop_size: int | None = None,
                 augmentations: frozenset[str] | None = None, strength: float = 1.0) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown views preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if int(n_views) < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        if crop_size is not None and preset != "imagenet224":
            raise ValueError(f"crop_size only applies to the imagenet224 preset, not {preset!r}")
        unknown = set(augmentations or ()) - AUGMENTATIONS
        if unknown:
            raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; choose among {sorted(AUGMENTATIONS)}")
        if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength >= 0):
            raise ValueError(f"view strength must be a finite number >= 0 (1 = the preset, 0 = no augmentation), "
                             f"got {strength!r}")
        self.allowed = AUGMENTATIONS if augmentations is None else frozenset(augmentations)
        self.preset, self.n_views, self.strength = preset, int(n_views), float(strength)
        self.crop_size = int(crop_size or 224)
        self._pipelines = nn.ModuleDict()

    def _pipeline(self, h: int, w: int) -> nn.Module:
        key = f"{h}x{w}"
        if key not in self._pipelines:
            s = self.strength
            if self.preset == "grey28":
                aug = [("crop", _resized_crop((h, w), 0.5, s)), ("affine", _affine(s))]
            elif self.preset == "colour32":
                aug = [("crop", K.RandomCrop((h, w), padding=round(4 * s))), ("hflip", K.RandomHorizontalFlip()),
                       ("colour", K.ColorJitter(0.4 * s, 0.4 * s, 0.4 * s, min(0.5, 0.1 * s), p=0.8))]
            else:
                size = (self.crop_size, self.crop_size)
                crop = ("crop", _resized_crop(size, 0.16, s))
                if "crop" not in self.allowed or s == 0:  # the output size must still be the crop size
                    crop = ("resize", K.Resize(size))
                aug = [crop, ("hflip", K.RandomHorizontalFlip())]
            if s == 0:  # no augmentation: only the resize a preset needs
                aug = [(name, module) for name, module in aug if name == "resize"]
            aug = [module for name, module in aug if name in self.allowed or name == "resize"]
            self._pipelines[key] = nn.Sequential(*aug)
        return self._pipelines[key]

    def _check(self, images: Tensor) -> None:
        if images.dim() != 4:
            raise ValueError(f"Views expects a batch [B, C, H, W], got shape {tuple(images.shape)}")
        if self.preset == "colour32" and images.shape[1] == 3:
            return
        if self.preset == "colour32":
            raise ValueError(f"colour32 expects 3 channels, got {images.shape[1]}")

    def forward(self, images: Tensor) -> Tensor:
        """``[B, C, H, W]`` in [0, 1] → ``[n_views * B, C, S, S]`` in [0, 1], view-major order."""
        self._check(images)
        tiled = images.repeat(self.n_views, 1, 1, 1)
        out = self._pipeline(images.shape[-2], images.shape[-1])(tiled)
        return out.clamp_(0.0, 1.0)

    @torch.no_grad()
    def eval_transform(self, images: Tensor) -> Tensor:
        """Deterministic test-time transform: identity for ``grey28``/``colour32``; for
        ``imagenet224`` a center crop to ``crop_size`` (an input smaller than the crop is resized)."""
        self._check(images)
        if self.preset != "imagenet224":
            return images
        s = self.crop_size
        h, w = images.shape[-2:]
        if h < s or w < s:
            return F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
        top, left = (h - s) // 2, (w - s) // 2
        return images[..., top:top + s, left:left + s]


def _resized_crop(size: tuple[int, int], lo: float, s: float) -> nn.Module:
    """RandomResizedCrop whose smallest area fraction ``lo`` and aspect range (3/4, 4/3) are scaled by
    strength ``s`` (``s = 1``: exactly ``lo`` and (3/4, 4/3))."""
    return K.RandomResizedCrop(size, scale=(max(MIN_CROP_SCALE, lo - (1 - lo) * (s - 1)), 1.0),
                               ratio=((3 / 4) ** s, (4 / 3) ** s))


def _affine(s: float) -> nn.Module:
    """The small affine of ``grey28`` (10 degrees, 10 % translation at ``s = 1``), p = 0.5."""
    return K.RandomAffine(degrees=min(180.0, 10.0 * s), translate=(min(1.0, 0.1 * s), min(1.0, 0.1 * s)), p=0.5)
