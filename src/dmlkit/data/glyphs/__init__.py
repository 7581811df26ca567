"""The glyphs dataset: characters as classes, font faces as instances, built offline from installed fonts.

:func:`build_glyphs` renders and cleans (:mod:`.render`, :mod:`.clean`, :mod:`.fonts`,
:mod:`.codepoints`); :func:`dmlkit.data.readers.glyphs.read_glyphs` serves the variants.
"""
from dmlkit.data.glyphs.build import build_glyphs

__all__ = ["build_glyphs"]
