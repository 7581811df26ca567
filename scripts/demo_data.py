"""The demo's glyphs build: the `glyphs` rules on the Latin code points and every 6th font face (seconds).

``dmlkit datasets build glyphs`` renders all 3,625 candidate code points in all 639 faces of the core
fonts (411,153 renders, ~1.5-3.5 min on 2 cores). The demo renders the 316 candidates up to U+017F (Basic
Latin, Latin-1, Latin Extended-A) in every 6th face of the same list (107 faces; ~27,000 renders), with
the same rules and cleaning. Latin letters are in nearly every face, so ~300 alphabetic classes keep >= 40
instances and the ``glyphs`` reader takes its 200 classes (100 train / 100 unseen test, <= 60 instances
each) from this build as from the full one: letters with and without diacritics (e, é, è, ê, ë, ē, ĕ, ė,
ę, ě are ten classes), another set than the full build's mix of scripts, so its numbers are not the
results table's. It goes to its own folder (never the full build's): pass ``--data-root`` with the
printed folder.

Usage: ``python scripts/demo_data.py [--root DIR]`` -> prints the data root (DIR, default
``~/.cache/dmlkit/demo``); does nothing when a build is already there.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dmlkit.data.roots import cache_dir

LAST_CODE_POINT = 0x017F  #: the end of Latin Extended-A
FACE_STEP = 6  #: every 6th face of the core list


def demo_code_points() -> list[int]:
    """The demo build's candidates: the `glyphs` candidates up to U+017F."""
    from dmlkit.data.glyphs.codepoints import candidate_code_points

    return [cp for cp in candidate_code_points() if cp <= LAST_CODE_POINT]


def demo_faces() -> list:
    """Every ``FACE_STEP``-th face of what ``build_glyphs(font_list="core")`` draws, in its order."""
    from dmlkit.data.glyphs import fonts

    return fonts.pinned_faces("core")[::FACE_STEP]


def build_demo_data(root: Path) -> Path:
    """Build the demo's glyphs into ``root/glyphs`` unless a build is there; returns ``root``."""
    from dmlkit.data.glyphs import build_glyphs

    folder = root / "glyphs"
    if not ((folder / "manifest.json").is_file() and (folder / "images.npy").is_file()):
        build_glyphs(folder, faces=demo_faces(), code_points=demo_code_points())
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=cache_dir("demo"), help="data root (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    print(build_demo_data(args.root.expanduser()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
