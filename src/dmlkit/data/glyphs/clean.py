"""Cleaning rules that keep glyph classes distinct, each on near-identical renders.

Two renders ``a``, ``b`` (uint8 ink on 0) are *near-identical* when their pixel difference is small
relative to their ink (an absolute threshold would merge é/è, whose difference is only an accent):

    d(a, b) = sum |a - b| / ((sum a + sum b) / 2)  <  NEAR

Finding such pairs among n renders never compares every pair at full resolution: 4x4 block sums
``P`` shrink L1 distances (sum|P(a) - P(b)| <= sum|a - b|) and the L2 norm is at most the L1 norm,
so ``||P(a) - P(b)||_2 < NEAR * mean ink`` is a necessary condition, found with one matrix
product; only those candidates are checked at full resolution.

Rules (applied by :mod:`dmlkit.data.glyphs.build`):

- homoglyphs: code points near-identical in more than half of the faces that map both (and at
  least ``MIN_VOTES`` faces) are one class (A/Α/А, µ/μ, Ω/Ω, hyphen variants ...);
- collisions: two different classes near-identical within one face (small caps, placeholder
  boxes) drop that face's instances of both;
- near-duplicates: within a class, an instance near-identical to one of an earlier face is dropped
  (shared glyph sets, derived fonts);
- picture fonts: a face whose ASCII letters do not look like everyone else's (median cosine
  similarity to the per-letter consensus below ``PICTURE_SIMILARITY``) or not like their own letter
  (fewer than ``PICTURE_NEAREST`` nearest to their own letter's consensus, case-insensitively) is
  a picture or dingbat font and is dropped whole.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

NEAR = 0.05  #: relative L1 distance under which two renders are the same drawing
MIN_VOTES = 2  #: faces that must map both code points before they can be merged as homoglyphs
PICTURE_SIMILARITY = 0.5  #: median cosine similarity to the letter consensus below which a face is a picture font
PICTURE_NEAREST = 0.15  #: fraction of letters nearest to their own consensus below which a face is a picture font
BLOCK = 4  #: side of the blocks summed for the coarse descriptor


def pooled(images: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """``uint8 [n, S, S]`` -> float32 ``[n, (S/block)^2]`` block sums of the ink in [0, 1] units."""
    n, side, _ = images.shape
    blocks = images.reshape(n, side // block, block, side // block, block).sum(axis=(2, 4), dtype=np.float32)
    return blocks.reshape(n, (side // block) ** 2) / np.float32(255.0)


def relative_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``sum|a - b| / mean ink`` of two uint8 renders (inf when both are empty)."""
    diff = np.abs(a.astype(np.int32) - b.astype(np.int32)).sum()
    ink = (int(a.sum(dtype=np.int64)) + int(b.sum(dtype=np.int64))) / 2
    return float(diff / ink) if ink > 0 else float("inf")


def candidate_pairs(descriptors: np.ndarray, ink: np.ndarray, near: float = NEAR) -> Iterator[tuple[int, int]]:
    """Pairs ``i < j`` (in order of i, then j) that *may* be near-identical: coarse L2 under ``near * mean ink``."""
    n = len(ink)
    d = descriptors.astype(np.float32)
    sq = (d * d).sum(axis=1)
    for start in range(0, n, 1024):  # row blocks keep the distance matrix small
        rows = slice(start, min(start + 1024, n))
        dist2 = sq[rows, None] + sq[None, :] - 2.0 * d[rows] @ d.T
        limit = (near * (ink[rows, None] + ink[None, :]) / 2) ** 2
        i, j = np.nonzero(dist2 < limit * 1.0001 + 1e-6)
        i = i + start
        keep = i < j
        yield from zip(i[keep].tolist(), j[keep].tolist())


def near_pairs(images: np.ndarray | Callable[[int], np.ndarray], descriptors: np.ndarray,
               ink: np.ndarray, near: float = NEAR) -> np.ndarray:
    """All pairs ``i < j`` of near-identical renders, int64 ``[m, 2]``.

    Args:
        images: uint8 ``[n, S, S]``, or a function ``i -> uint8 [S, S]`` (renders on disk).
        descriptors: :func:`pooled` of the same renders, ``[n, D]``.
        ink: ``[n]`` ink of each render (sum of pixels / 255).
    """
    get = images.__getitem__ if isinstance(images, np.ndarray) else images
    found = [(a, b) for a, b in candidate_pairs(descriptors, ink, near) if relative_distance(get(a), get(b)) < near]
    return np.array(found, dtype=np.int64).reshape(-1, 2)


def homoglyph_groups(same: dict[tuple[int, int], int], both: dict[tuple[int, int], int],
                     min_votes: int = MIN_VOTES) -> dict[int, int]:
    """``code point -> representative`` (the group's lowest code point) for every merged code point.

    Args:
        same: ``(a, b) -> number of faces`` in which a and b are near-identical.
        both: ``(a, b) -> number of faces`` that map both.
    """
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for (a, b), votes in sorted(same.items()):
        if votes >= min_votes and votes > both[(a, b)] / 2:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return {x: root(x) for x in parent} | {root(x): root(x) for x in parent}


def picture_faces(letters: dict[int, dict[int, np.ndarray]], threshold: float = PICTURE_SIMILARITY,
                  min_nearest: float = PICTURE_NEAREST, min_letters: int = 10) -> dict[int, float]:
    """Faces whose ASCII letters are not the letters: ``face -> median similarity``.

    Args:
        letters: ``code point -> {face: descriptor}`` for the ASCII letters each face draws.
    The consensus of a letter is the per-block median over every face that draws it. A face is a
    picture font when its letters are unlike everyone's (median cosine similarity to their own
    letter's consensus below ``threshold``), or unlike their own letter (fewer than ``min_nearest``
    of them are nearest, case-insensitively, to their own letter's consensus among all letters').
    Faces drawing fewer than ``min_letters`` ASCII letters (other scripts, symbols) are not judged.
    """
    points = sorted(letters)
    consensus = np.stack([np.median(np.stack(list(letters[cp].values())), axis=0) for cp in points])
    consensus /= np.linalg.norm(consensus, axis=1, keepdims=True) + 1e-9
    letter = np.array([chr(cp).lower() for cp in points])
    similar: dict[int, list[float]] = {}
    nearest: dict[int, list[bool]] = {}
    for j, cp in enumerate(points):
        for face, desc in letters[cp].items():
            cosine = consensus @ desc / (np.linalg.norm(desc) + 1e-9)
            similar.setdefault(face, []).append(float(cosine[j]))
            nearest.setdefault(face, []).append(bool(letter[int(np.argmax(cosine))] == letter[j]))
    return {face: float(np.median(s)) for face, s in similar.items()
            if len(s) >= min_letters and (np.median(s) < threshold or np.mean(nearest[face]) < min_nearest)}


def first_of_near_duplicates(images: Callable[[int], np.ndarray], descriptors: np.ndarray, ink: np.ndarray,
                             near: float = NEAR) -> np.ndarray:
    """Bool ``[n]``: keep item i unless it is near-identical to a kept item before it (items in face order).

    Candidates come in order of the earlier item, so an item's fate is settled before it can drop
    others; a pair is checked at full resolution only while both items are still kept (a clique
    of m identical renders costs m checks, not m^2/2)."""
    keep = np.ones(len(ink), dtype=bool)
    for a, b in candidate_pairs(descriptors, ink, near):
        if keep[a] and keep[b] and relative_distance(images(a), images(b)) < near:
            keep[b] = False
    return keep
