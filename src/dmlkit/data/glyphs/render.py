"""Drawing one character of one font face into a fixed square, the same way for every character.

Scaling each glyph to fill its own box makes o/O, c/C, s/S, x/X and the dashes identical, so a
face gets **one** pixel size and **one** baseline, measured from its Latin letters:

- at a reference size, the median top of the face's capitals and ascender letters (those its cmap
  maps) is its cap height; the pixel size maps it onto ``CAP`` of the side (a median, so that one
  swash letter does not shrink the face), and the baseline sits at ``BASELINE`` of the side, which
  leaves room above for accents and below for descenders;
- a face without Latin letters fills ``BODY`` of the side with its ascent-to-descent span instead.

Each glyph is then drawn at that size on that baseline and centred horizontally by its ink; only
a glyph that would leave the square (wide arrows, tall accented capitals) is drawn smaller
(by the factor that makes it fit) and moved inside. Rendering is Pillow's FreeType with basic
layout (no shaping): same font file + same FreeType -> same bytes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFont

SIDE = 64  #: side of the square image, pixels
CAP = 0.45  #: fraction of the side that the face's cap height (median top of capitals, ascenders) fills
BASELINE = 0.70  #: the baseline's height from the top, as a fraction of the side (room above for accents)
BODY = 0.75  #: fraction of the side that the ascent-to-descent span fills, for faces without Latin letters
PAD = 1  #: pixels kept free at every border
REFERENCE = 100.0  #: pixel size at which a face is measured
LATIN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TALL = "ABCDEFGHIJKLMNOPQRSTUVWXYZbdhkl"  #: their tops set the face's top (cap height / ascender)


def _ink(font: ImageFont.FreeTypeFont, char: str) -> tuple[np.ndarray, int] | None:
    """The glyph's ink, cropped: ``(uint8 [h, w], top)`` with ``top`` the ink's first row relative
    to the baseline (negative above it); None when the glyph draws nothing."""
    mask, (_, top) = font.getmask2(char, mode="L", anchor="ls")
    if mask.size[0] == 0 or mask.size[1] == 0:
        return None
    array = np.asarray(Image.Image()._new(mask))  # FreeType's bitmap, without a canvas to draw on (4x faster)
    rows, cols = np.flatnonzero(array.any(axis=1)), np.flatnonzero(array.any(axis=0))
    if len(rows) == 0:
        return None
    return array[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], top + int(rows[0])


class FaceRenderer:
    """Renders characters of one face (``path``, collection ``index``) at ``side`` x ``side``.

    Args:
        path: a TrueType/OpenType file (or collection).
        index: the face inside a collection (0 for single-face files).
        mapped: the code points the face's cmap maps (Latin letters among them set the scale).
        side: image side in pixels.
    """

    def __init__(self, path: str, index: int, mapped: set[int] | frozenset[int], side: int = SIDE) -> None:
        self.path, self.index, self.side = str(path), int(index), int(side)
        reference = self._font(REFERENCE)
        tall = [ink[1] for ink in (_ink(reference, c) for c in TALL if ord(c) in mapped) if ink is not None]
        if tall:  # the median top of capitals and ascenders: one swash letter does not shrink the face
            cap = max(-float(np.median(tall)), 1.0)
            self.size = REFERENCE * CAP * self.side / cap
            self.baseline = BASELINE * self.side
        else:  # no Latin letters: the face's ascent-to-descent span fills BODY, centred
            ascent, descent = reference.getmetrics()
            self.size = REFERENCE * BODY * self.side / max(ascent + descent, 1)
            self.baseline = self.side / 2 + (ascent - descent) / 2 * self.size / REFERENCE
        self._fonts: dict[float, ImageFont.FreeTypeFont] = {}

    def _font(self, size: float) -> ImageFont.FreeTypeFont:
        return ImageFont.truetype(self.path, size=size, index=self.index, layout_engine=ImageFont.Layout.BASIC)

    def _sized(self, size: float) -> ImageFont.FreeTypeFont:
        if size not in self._fonts:
            self._fonts[size] = self._font(size)
        return self._fonts[size]

    def render(self, code_point: int) -> np.ndarray | None:
        """uint8 ``[side, side]`` (ink 255 on 0), or None when the glyph has no ink."""
        char = chr(code_point)
        ink = _ink(self._sized(self.size), char)
        if ink is None:
            return None
        room = self.side - 2 * PAD
        height, width = ink[0].shape
        if width > room or height > room:  # shrink only on overflow, by the factor that fits
            ink = _ink(self._font(self.size * min(room / width, room / height) * 0.98), char)
            if ink is None:
                return None
        array = ink[0][:room, :room]
        height, width = array.shape
        y = min(max(round(self.baseline + ink[1]), PAD), self.side - PAD - height)  # kept inside the square
        x = (self.side - width) // 2
        out = np.zeros((self.side, self.side), dtype=np.uint8)
        out[y:y + height, x:x + width] = array
        return out
