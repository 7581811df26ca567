"""Decoding image files for file-backed datasets (PIL, installed with matplotlib).

File-backed datasets (CUB, Cars, SOP, In-shop, folders, CSV) keep paths in their records; a
:class:`ImageLoader` turns one path into a uint8 ``[C, S, S]`` array at the stored size ``S``
(:func:`stored_size`: 256 for a 224 network input, so that the ``imagenet224`` views can
random-resize-crop and the eval transform can center-crop 224 from 256).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from dmlkit.data.base import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def stored_size(image_size: int) -> int:
    """Side at which a file image is stored for a network input of ``image_size``:
    256 for 224/227 inputs (resize 256, then crop), the input size otherwise."""
    return 256 if image_size in (224, 227) else int(image_size)


class ImageLoader:
    """``path -> uint8 [C, size, size]``: decode with PIL, convert to RGB (or grey), resize (bilinear).

    Picklable, so DataLoader workers can use it. A file PIL cannot decode raises
    :class:`DatasetError` naming the file.
    """

    def __init__(self, size: int, channels: int = 3) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.size, self.channels = int(size), int(channels)

    def __call__(self, path: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                im = im.resize((self.size, self.size), Image.Resampling.BILINEAR)
                array = np.asarray(im, dtype=np.uint8)
        except FileNotFoundError:
            raise DatasetError(f"image file {path} does not exist; check the dataset folder") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise DatasetError(
                f"cannot decode image {path} ({type(err).__name__}: {err}); the file is corrupt or not an "
                f"image — re-download it or remove it from the dataset"
            ) from None
        return array[None] if self.channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))

    def __repr__(self) -> str:
        return f"ImageLoader(size={self.size}, channels={self.channels})"


def check_files_exist(name: str, paths: Sequence[str], hint: str = "") -> None:
    """Raise :class:`DatasetError` listing (up to 5) files from ``paths`` that do not exist."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{name}: {len(missing)} of {len(paths)} image files are missing: {shown}. "
            f"{hint or 'The download is incomplete or the folder layout differs from the expected one.'}"
        )
