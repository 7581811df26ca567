"""Which font faces a build draws: discovery, the Debian package of each file, the family cap.

A *face* is one (file, index) pair: a ``.ttc`` collection holds several. Faces are named by their
typographic family and style (name IDs 16/17, else 1/2). Two faces with the same family and style
(the same font shipped as ``.otf`` and ``.ttf``, say) count once, and a family keeps at most
``MAX_STYLES`` styles, the regular/bold/italic/bold-italic ones first, so that one large family
(a dozen weights of one design) cannot dominate a class.

A build draws the faces of one pinned list of Debian packages (``src/dmlkit/data/fonts/<list>.txt``):
:func:`pinned_faces` keeps the faces of the list's packages *before* the family cap, so what else is
installed never changes the faces a list gives.
"""
from __future__ import annotations

import glob
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from dmlkit.data.base import DatasetError

#: where Debian's font packages put TrueType/OpenType files (TeX's and Wine's fonts included)
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/usr/share/texmf/fonts/opentype", "/usr/share/wine/fonts")
EXTENSIONS = (".ttf", ".otf", ".ttc", ".otc")
MAX_STYLES = 4  #: styles kept per family
_STYLE_RANK = {"regular": 0, "book": 0, "roman": 0, "normal": 0, "medium": 1, "bold": 2, "italic": 3, "oblique": 3,
               "bold italic": 4, "bold oblique": 4}


@dataclass(frozen=True)
class Face:
    """One face: ``path`` (as found, not resolved), ``index`` in a collection, names, package."""

    path: str
    index: int
    family: str
    style: str
    package: str = ""
    version: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def font_files(dirs: tuple[str, ...] = FONT_DIRS) -> list[str]:
    """Every TrueType/OpenType file under ``dirs`` (sorted, one per real file; web fonts excluded)."""
    seen: dict[str, str] = {}
    for folder in dirs:
        for path in sorted(glob.glob(os.path.join(folder, "**", "*"), recursive=True)):
            if path.lower().endswith(EXTENSIONS) and os.path.isfile(path) and "/web" not in path.lower():
                seen.setdefault(os.path.realpath(path), path)
    return sorted(seen.values())


def _names(font) -> tuple[str, str]:
    name = font["name"]
    family = name.getDebugName(16) or name.getDebugName(1) or ""
    style = name.getDebugName(17) or name.getDebugName(2) or "Regular"
    return family.strip(), style.strip()


def read_faces(paths: list[str]) -> list[Face]:
    """The faces of ``paths`` (every face of a collection); unreadable files are skipped."""
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    faces = []
    for path in paths:
        try:
            if path.lower().endswith((".ttc", ".otc")):
                fonts = list(enumerate(TTCollection(path, lazy=True).fonts))
            else:
                fonts = [(0, TTFont(path, lazy=True))]
            faces += [Face(path, i, *_names(font)) for i, font in fonts]
        except (TTLibError, OSError, KeyError, AssertionError, ValueError, IndexError):
            continue
    return faces


def cap_families(faces: list[Face], max_styles: int = MAX_STYLES) -> list[Face]:
    """One face per (family, style), at most ``max_styles`` styles per family; sorted by family, style."""
    unique: dict[tuple[str, str], Face] = {}
    for face in sorted(faces, key=lambda f: (f.path, f.index)):
        unique.setdefault((face.family.lower(), face.style.lower()), face)
    by_family: dict[str, list[Face]] = {}
    for (family, _), face in sorted(unique.items()):
        by_family.setdefault(family, []).append(face)
    kept = []
    for family in sorted(by_family):
        styles = sorted(by_family[family], key=lambda f: (_STYLE_RANK.get(f.style.lower(), 9), f.style.lower()))
        kept += styles[:max_styles]
    return sorted(kept, key=lambda f: (f.family.lower(), f.style.lower()))


def debian_packages(paths: list[str], info_dir: str = "/var/lib/dpkg/info") -> dict[str, tuple[str, str]]:
    """``path -> (package, version)`` from dpkg's file lists; paths no package owns are left out."""
    wanted = {os.path.realpath(p): p for p in paths} | {p: p for p in paths}
    owners: dict[str, str] = {}
    for listing in sorted(Path(info_dir).glob("*.list")) if Path(info_dir).is_dir() else []:
        package = listing.name[:-len(".list")].split(":")[0]
        for line in listing.read_text(errors="replace").splitlines():
            if line in wanted:
                owners.setdefault(wanted[line], package)
    versions: dict[str, str] = {}
    if owners:
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *sorted(set(owners.values()))],
                                 capture_output=True, text=True, check=False).stdout
            versions = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
        except OSError:
            pass
    return {path: (package, versions.get(package, "")) for path, package in owners.items()}


def with_packages(faces: list[Face]) -> list[Face]:
    """``faces`` with their Debian package and version filled in where dpkg knows the file."""
    owners = debian_packages(sorted({f.path for f in faces}))
    return [Face(f.path, f.index, f.family, f.style, *owners.get(f.path, ("", ""))) for f in faces]


def list_path(name: str) -> Path:
    """The file of the pinned font list ``name`` (``core`` or ``large``)."""
    path = Path(__file__).resolve().parent.parent / "fonts" / f"{name}.txt"
    if not path.is_file():
        raise ValueError(f"unknown font list {name!r}; choose core or large (src/dmlkit/data/fonts/*.txt)")
    return path


def pinned_packages(name: str) -> set[str]:
    """The packages of the pinned font list ``name`` (``core`` or ``large``)."""
    lines = list_path(name).read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def installed(packages: set[str]) -> set[str]:
    """Those of ``packages`` that dpkg reports as installed (none where there is no dpkg)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n", *sorted(packages)],
                             capture_output=True, text=True, check=False).stdout
    except OSError:
        return set()
    return {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}


def pinned_faces(name: str) -> list[Face]:
    """The faces of the pinned list ``name``: its packages' faces, then :func:`cap_families`.

    Raises:
        DatasetError: when a package of the list is not installed (a partial list gives other data).
    """
    packages = pinned_packages(name)
    missing = sorted(packages - installed(packages))
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise DatasetError(f"{len(missing)} of the {len(packages)} font packages of the {name} list are not installed "
                           f"({shown}); install them: sudo apt-get install $(grep -v '^#' {list_path(name)})")
    return select_pinned(with_packages(read_faces(font_files())), packages)


def select_pinned(faces: list[Face], packages: set[str]) -> list[Face]:
    """The faces of ``packages`` (their package filled in), capped per family after the choice."""
    return cap_families([face for face in faces if face.package in packages])
