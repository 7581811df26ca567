"""The candidate code points of a glyphs build, and which of them count as alphabetic/common symbols."""
from __future__ import annotations

import unicodedata

#: (first, last) inclusive ranges drawn from every face that maps them
RANGES = (
    (0x0021, 0x007E),  # Basic Latin: letters, digits, punctuation
    (0x00A1, 0x024F),  # Latin-1 supplement, Latin Extended-A/B
    (0x0250, 0x02AF),  # IPA
    (0x0370, 0x03FF),  # Greek
    (0x0400, 0x04FF),  # Cyrillic
    (0x0531, 0x058A),  # Armenian
    (0x05D0, 0x05EA),  # Hebrew letters
    (0x0621, 0x064A),  # Arabic letters
    (0x0904, 0x0939), (0x0966, 0x096F),  # Devanagari letters, digits
    (0x0E01, 0x0E5B),  # Thai
    (0x10D0, 0x10FA),  # Georgian
    (0x1E00, 0x1EFF),  # Latin Extended Additional
    (0x2010, 0x205E),  # general punctuation
    (0x2070, 0x209C),  # super- and subscripts
    (0x20A0, 0x20C0),  # currency
    (0x2100, 0x218B),  # letterlike symbols, number forms
    (0x2190, 0x21FF),  # arrows
    (0x2200, 0x22FF),  # mathematical operators
    (0x2300, 0x23FF),  # miscellaneous technical
    (0x2460, 0x24FF),  # enclosed alphanumerics
    (0x2500, 0x25FF),  # box drawing, block elements, geometric shapes
    (0x2600, 0x27BF),  # miscellaneous symbols, dingbats
    (0x3041, 0x3096), (0x30A1, 0x30FA),  # hiragana, katakana
)
#: the first-grade kyōiku kanji (80 common characters)
KANJI = "一右雨円王音下火花貝学気九休玉金空月犬見五口校左三山子四糸字耳七車手十出女小上森人水正生青夕石赤千川先早草足村大男竹中虫町天田土二日入年白八百文木本名目立力林六"
#: ranges whose classes may enter the CUB-like ``glyphs`` variant: alphabetic scripts and common symbols
ALPHABETIC = ((0x0021, 0x024F), (0x0370, 0x04FF), (0x1E00, 0x1EFF), (0x2010, 0x205E), (0x20A0, 0x20C0),
              (0x2190, 0x21FF), (0x2200, 0x22FF))
_SKIPPED = {"Cn", "Cc", "Cf", "Co", "Cs", "Zs", "Zl", "Zp", "Mn", "Mc", "Me"}


def candidate_code_points() -> list[int]:
    """Every assigned, visible code point of :data:`RANGES` plus :data:`KANJI`, sorted."""
    points = {cp for first, last in RANGES for cp in range(first, last + 1)} | {ord(c) for c in KANJI}
    return sorted(cp for cp in points if unicodedata.category(chr(cp)) not in _SKIPPED)


def is_alphabetic(code_point: int) -> bool:
    """Whether ``code_point`` lies in :data:`ALPHABETIC`."""
    return any(first <= code_point <= last for first, last in ALPHABETIC)


def class_name(code_points: list[int]) -> str:
    """``"A U+0041/U+0391/U+0410"``: the character of the first code point, then every code point."""
    return f"{chr(code_points[0])} " + "/".join(f"U+{cp:04X}" for cp in code_points)
