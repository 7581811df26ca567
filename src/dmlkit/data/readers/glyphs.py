"""The glyphs variants, each read from its own build (:mod:`dmlkit.data.glyphs`), built on first use.

Each variant has its own pinned font list and folder: ``glyphs`` from the core list
(``src/dmlkit/data/fonts/core.txt``) in ``<data root>/glyphs``, ``glyphs-large`` from the large list in
``<data root>/glyphs-large`` (data root: ``--data-root``, else ``$DMLKIT_DATA``, else ``~/.cache/dmlkit``).

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
#: each variant is built from its own pinned font list (src/dmlkit/data/fonts/<list>.txt) into its own folder
FONT_LISTS = {"glyphs": "core", "glyphs-large": "large"}
VARIANTS = tuple(FONT_LISTS)
CUB_CLASSES, CUB_MIN, CUB_MAX = 200, 40, 60
AUGMENTATIONS = frozenset({"crop", "affine"})  #: no horizontal flip: it turns b into d


def _is_build(folder: Path) -> bool:
    return (folder / "manifest.json").is_file() and (folder / "images.npy").is_file()


def _font_list(folder: Path) -> str:
    return json.loads((folder / "manifest.json").read_text()).get("font_list", "installed")


def find_build(variant: str, root: str | None) -> Path | None:
    """The first folder holding ``variant``'s build: data root, ``$DMLKIT_DATA``, user cache, each as
    given and with ``/<variant>``; a build of another font list there is skipped (:func:`wrong_build`)."""
    for _, base in search_bases(variant, root):
        for folder in (base, base / variant):
            if _is_build(folder) and _font_list(folder) == FONT_LISTS[variant]:
                return folder
    return None


def build_target(variant: str, root: str | None) -> Path:
    """Where a new build of ``variant`` goes: ``ROOT/<variant>``, else ``$DMLKIT_DATA/<variant>``, else
    ``~/.cache/dmlkit/<variant>``."""
    if root:
        return Path(root).expanduser() / variant
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser() / variant
    return cache_dir(variant)


def wrong_build(variant: str, folder: Path) -> str | None:
    """Why ``folder`` cannot take a build of ``variant`` without ``--force`` (None when it can)."""
    if _is_build(folder) and _font_list(folder) != FONT_LISTS[variant]:
        return (f"{folder} holds a glyphs build of the {_font_list(folder)} fonts, but {variant} is built from the "
                f"{FONT_LISTS[variant]} font list; rebuild it with `dmlkit datasets build {variant} --force`")
    return None


def build_variant(variant: str, root: str | None, force: bool = False) -> tuple[Path, dict | None]:
    """Build ``variant`` from its font list unless it is built (or ``force``): ``(folder, manifest or None)``.

    Only the first data root counts (``root``, else ``$DMLKIT_DATA``, else the user cache): a build
    found further down the search is never the one rebuilt for ``--data-root PATH``."""
    _, base = search_bases(variant, root)[0]
    folder = next((f for f in (base, base / variant) if _is_build(f) and _font_list(f) == FONT_LISTS[variant]), None)
    if folder is None and _is_build(base):
        raise DatasetError(f"{base} is itself a glyphs build of the {_font_list(base)} fonts; pass the folder above it "
                           f"as --data-root to build {variant} beside it")
    if folder is not None and not force:
        return folder, None
    target = folder or build_target(variant, root)
    problem = wrong_build(variant, target)
    if problem and not force:
        raise DatasetError(problem)
    from dmlkit.data.glyphs import build_glyphs

    log.info("%s: building from the %s font list into %s (minutes)", variant, FONT_LISTS[variant], target)
    return target, build_glyphs(target, font_list=FONT_LISTS[variant])


def load_build(variant: str, root: str | None, build: bool = True) -> tuple[Path, dict]:
    """``(folder, manifest)`` of ``variant``'s build, building it first if there is none and ``build``."""
    folder = find_build(variant, root)
    if folder is None:
        if not build:
            raise DatasetError(f"{variant} is not built yet; run `dmlkit datasets build {variant}`")
        folder, _ = build_variant(variant, root)
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
    folder, manifest = load_build(variant, root)
    stored = np.load(folder / "labels.npy")
    images = np.load(folder / "images.npy", mmap_mode="r")
    if len(images) != len(stored):
        raise DatasetError(f"{folder}: images.npy and labels.npy differ in length; rebuild with "
                           f"`dmlkit datasets build {variant} --force`")
    rows = select(manifest, stored, variant)
    ids, labels = np.unique(stored[rows], return_inverse=True)  # classes in code-point order
    names = [manifest["classes"][i]["name"] for i in ids]
    splits = np.where(labels % 2 == 0, "train", "test")
    if len(rows) < len(images):
        images = np.ascontiguousarray(images[rows])
    return DatasetRecords(variant, images, labels.astype(np.int64), splits, names, image_size=manifest["side"],
                          channels=1, augmentations=AUGMENTATIONS)
