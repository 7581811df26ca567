"""The glyphs variants, read from a build (:mod:`dmlkit.data.glyphs`), built on first use.

- ``glyphs`` (CUB-like): 200 classes from the alphabetic scripts and common symbols
  (:data:`dmlkit.data.glyphs.codepoints.ALPHABETIC`) among those with >= 40 instances, spread
  evenly over them in code-point order; at most 60 instances per class (a seeded draw per class);
- ``glyphs-large`` (SOP-like): every stored class (>= 20 instances).

Both alternate classes in code-point order: even positions train, odd positions test (class-disjoint).
Class names are the characters with their code points (``"A U+0041/U+0391/U+0410"``). Images are
64x64 grey; horizontal flips are not identity-preserving (b/d, p/q), so the records declare only
crops and small affine moves as class-keeping augmentations.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from dmlkit.data.base import DatasetError, DatasetRecords
from dmlkit.data.roots import ENV_VAR, cache_dir, search_bases

log = logging.getLogger(__name__)
VARIANTS = ("glyphs", "glyphs-large")
CUB_CLASSES, CUB_MIN, CUB_MAX = 200, 40, 60
AUGMENTATIONS = frozenset({"crop", "affine"})  #: no horizontal flip: it turns b into d


def find_build(root: str | None) -> Path | None:
    """The first folder (data root, ``$DMLKIT_DATA``, user cache; each also ``/glyphs``) holding a build."""
    for _, base in search_bases("glyphs", root):
        for folder in (base, base / "glyphs"):
            if (folder / "manifest.json").is_file() and (folder / "images.npy").is_file():
                return folder
    return None


def build_target(root: str | None) -> Path:
    """Where a new build goes: ``ROOT/glyphs``, else ``$DMLKIT_DATA/glyphs``, else ``~/.cache/dmlkit/glyphs``."""
    if root:
        return Path(root).expanduser() / "glyphs"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser() / "glyphs"
    return cache_dir("glyphs")


def load_build(root: str | None, build: bool = True) -> tuple[Path, dict]:
    """``(folder, manifest)`` of the glyphs build, building it first if there is none and ``build``."""
    folder = find_build(root)
    if folder is None:
        if not build:
            raise DatasetError("glyphs is not built yet; run `dmlkit datasets build glyphs`")
        from dmlkit.data.glyphs import build_glyphs

        folder = build_target(root)
        log.info("glyphs: first use, building from the installed fonts into %s (a few minutes)", folder)
        build_glyphs(folder)
    return folder, json.loads((folder / "manifest.json").read_text())


def select(manifest: dict, labels: np.ndarray, variant: str) -> np.ndarray:
    """Sorted rows of the stored arrays that make up ``variant``."""
    classes = manifest["classes"]
    if variant == "glyphs-large":
        return np.arange(len(labels))
    from dmlkit.data.glyphs.codepoints import is_alphabetic

    eligible = [c for c in classes if is_alphabetic(c["code_points"][0]) and c["instances"] >= CUB_MIN]
    if len(eligible) < CUB_CLASSES:
        raise DatasetError(
            f"glyphs needs {CUB_CLASSES} alphabetic classes with >= {CUB_MIN} instances, the build has {len(eligible)} "
            f"({manifest['counts']['faces_used']} font faces); install the core fonts (scripts/install.sh, or "
            f"apt-get install $(cat src/dmlkit/data/fonts/core.txt)), then `dmlkit datasets build glyphs --force`")
    chosen = [eligible[i] for i in np.linspace(0, len(eligible) - 1, CUB_CLASSES).round().astype(int)]
    starts = np.concatenate([[0], np.cumsum([c["instances"] for c in classes])])
    rows = []
    for c in chosen:
        rng = np.random.default_rng([0, c["code_points"][0]])
        rows.append(starts[c["id"]] + np.sort(rng.permutation(c["instances"])[:CUB_MAX]))
    return np.concatenate(rows)


def read_glyphs(variant: str, root: str | None = None) -> DatasetRecords:
    """The ``glyphs`` or ``glyphs-large`` records (building the dataset on first use)."""
    if variant not in VARIANTS:
        raise DatasetError(f"unknown glyphs variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    folder, manifest = load_build(root)
    stored = np.load(folder / "labels.npy")
    images = np.load(folder / "images.npy", mmap_mode="r")
    if len(images) != len(stored):
        raise DatasetError(f"{folder}: images.npy and labels.npy differ in length; rebuild with "
                           "`dmlkit datasets build glyphs --force`")
    rows = select(manifest, stored, variant)
    ids, labels = np.unique(stored[rows], return_inverse=True)  # classes in code-point order
    names = [manifest["classes"][i]["name"] for i in ids]
    splits = np.where(labels % 2 == 0, "train", "test")
    if len(rows) < len(images):
        images = np.ascontiguousarray(images[rows])
    return DatasetRecords(variant, images, labels.astype(np.int64), splits, names, image_size=manifest["side"],
                          channels=1, augmentations=AUGMENTATIONS)
