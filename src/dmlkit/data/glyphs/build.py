"""Build the glyphs dataset from the fonts on this machine: render, clean, store, write a manifest.

Streaming: each face is rendered in a worker (at most ``processes``), its renders appended to one
file on disk; memory holds only a 16x16 descriptor per render. The stored dataset is
``images.npy`` (uint8 ``[N, 1, 64, 64]``), ``labels.npy`` (class id), ``faces.npy`` (face id)
and ``manifest.json`` (faces with package and version, classes with code points, counts,
parameters, a SHA-256 of the three arrays). Same fonts -> same bytes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from dmlkit.data.base import DatasetError
from dmlkit.data.glyphs import clean, codepoints, fonts
from dmlkit.data.glyphs.render import BASELINE, BODY, CAP, LATIN, SIDE, FaceRenderer

log = logging.getLogger(__name__)
FORMAT = 1  #: bump when the stored layout or a rendering rule changes
MIN_INSTANCES = 20  #: classes with fewer instances are not stored
MANIFEST = "manifest.json"
ARRAYS = ("images.npy", "labels.npy", "faces.npy")


def _render_face(job: tuple[int, str, int, tuple[int, ...], int]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Worker: ``(face id, path, index, candidates, side)`` -> ``(face id, code points, renders, near pairs)``.

    A code point counts only if the face's cmap maps it to a glyph other than ``.notdef`` and the
    glyph has ink. Near pairs (:func:`clean.near_pairs`) are returned as code-point pairs.
    """
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    face_id, path, index, candidates, side = job
    empty = (face_id, np.zeros(0, np.int32), np.zeros((0, side, side), np.uint8), np.zeros((0, 2), np.int32))
    try:
        font = TTCollection(path, lazy=True).fonts[index] if path.lower().endswith((".ttc", ".otc")) else TTFont(path, lazy=True)
        cmap = font.getBestCmap() or {}
        mapped = {cp for cp, glyph in cmap.items() if glyph != ".notdef"}
        renderer = FaceRenderer(path, index, mapped, side)
    except (OSError, ValueError, KeyError, IndexError, AssertionError, TTLibError, struct.error):  # unreadable: nothing
        return empty
    points, images = [], []
    for cp in candidates:
        if cp in mapped:
            try:
                image = renderer.render(cp)
            except (OSError, ValueError):  # FreeType's "raster overflow" on a broken outline: the glyph is skipped
                continue
            if image is not None:
                points.append(cp)
                images.append(image)
    if not images:
        return empty
    stack = np.stack(images)
    ink = stack.sum(axis=(1, 2), dtype=np.float64) / 255.0
    pairs = clean.near_pairs(stack, clean.pooled(stack), ink)
    cps = np.array(points, dtype=np.int32)
    return face_id, cps, stack, cps[pairs].reshape(-1, 2)


class _Renders:
    """Renders appended to a raw file and read back one at a time (``os.pread``: no memory map, so
    the build's resident memory stays the descriptors, not the gigabytes of renders)."""

    def __init__(self, path: Path, side: int) -> None:
        self.path, self.side = path, side
        self.handle = open(path, "wb")  # noqa: SIM115 (closed in finish)
        self.faces: list[np.ndarray] = []
        self.cps: list[np.ndarray] = []
        self.descriptors: list[np.ndarray] = []
        self.ink: list[np.ndarray] = []

    def add(self, face: int, cps: np.ndarray, images: np.ndarray) -> None:
        if len(cps) == 0:
            return
        self.handle.write(np.ascontiguousarray(images).tobytes())
        self.faces.append(np.full(len(cps), face, np.int32))
        self.cps.append(cps)
        self.descriptors.append(clean.pooled(images).astype(np.float16))
        self.ink.append(images.sum(axis=(1, 2), dtype=np.float64) / 255.0)

    def finish(self) -> None:
        self.handle.close()
        join = lambda parts, dtype, shape=(0,): np.concatenate(parts) if parts else np.zeros(shape, dtype)
        self.face = join(self.faces, np.int32)
        self.cp = join(self.cps, np.int32)
        self.desc = join(self.descriptors, np.float16, (0, (self.side // clean.BLOCK) ** 2))
        self.ink_all = join(self.ink, np.float64)
        self.faces = self.cps = self.descriptors = self.ink = []
        self.fd = os.open(self.path, os.O_RDONLY)

    def image(self, row: int) -> np.ndarray:
        """Render ``row`` as uint8 ``[side, side]``."""
        size = self.side * self.side
        return np.frombuffer(os.pread(self.fd, size, int(row) * size), np.uint8).reshape(self.side, self.side)

    def close(self) -> None:
        os.close(self.fd)


def _render_all(faces: list[fonts.Face], candidates: list[int], side: int, processes: int, work: Path) -> tuple[_Renders, dict]:
    renders = _Renders(work / "renders.u8", side)
    pairs: dict[int, np.ndarray] = {}
    jobs = [(i, f.path, f.index, tuple(candidates), side) for i, f in enumerate(faces)]
    if processes > 1 and len(jobs) > 1:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(processes) as pool:
            results = pool.imap(_render_face, jobs, chunksize=1)  # in order: deterministic
            for face, cps, images, near in results:
                renders.add(face, cps, images)
                pairs[face] = near
    else:
        for job in jobs:
            face, cps, images, near = _render_face(job)
            renders.add(face, cps, images)
            pairs[face] = near
    renders.finish()
    return renders, pairs


def _homoglyphs(renders: _Renders, pairs: dict[int, np.ndarray], faces: list[int]) -> dict[int, int]:
    """``code point -> representative`` from the faces' near pairs (votes over faces that map both)."""
    same: dict[tuple[int, int], int] = {}
    for face in faces:
        for a, b in {(int(a), int(b)) for a, b in pairs[face]}:
            key = (min(a, b), max(a, b))
            same[key] = same.get(key, 0) + 1
    keys = [k for k, v in same.items() if v >= clean.MIN_VOTES]
    if not keys:
        return {}
    points = np.unique(renders.cp)
    column = {int(cp): i for i, cp in enumerate(points)}
    presence = np.zeros((len(faces), len(points)), dtype=bool)
    row = {face: i for i, face in enumerate(faces)}
    mask = np.isin(renders.face, faces)
    presence[[row[f] for f in renders.face[mask].tolist()], [column[c] for c in renders.cp[mask].tolist()]] = True
    a = np.array([column[k[0]] for k in keys])
    b = np.array([column[k[1]] for k in keys])
    both = (presence[:, a] & presence[:, b]).sum(axis=0)
    return clean.homoglyph_groups({k: same[k] for k in keys}, dict(zip(keys, both.tolist())))


def _instances(renders: _Renders, pairs: dict[int, np.ndarray], kept: set[int], groups: dict[int, int]) -> dict[int, list[int]]:
    """``class (representative code point) -> render rows``, one per face, collisions dropped."""
    rep = lambda cp: groups.get(cp, cp)
    dropped = {face: {r for a, b in pairs[face].tolist() for r in (rep(a), rep(b)) if rep(a) != rep(b)} for face in kept}
    classes: dict[int, list[int]] = {}
    seen: set[tuple[int, int]] = set()
    for row, (face, cp) in enumerate(zip(renders.face.tolist(), renders.cp.tolist())):
        cls = rep(cp)
        if face in kept and cls not in dropped[face] and (face, cls) not in seen:  # lowest code point first
            seen.add((face, cls))
            classes.setdefault(cls, []).append(row)
    return classes


def _deduplicate(renders: _Renders, rows: list[int]) -> list[int]:
    idx = np.array(rows)
    keep = clean.first_of_near_duplicates(lambda i: renders.image(idx[i]), renders.desc[idx].astype(np.float32),
                                          renders.ink_all[idx])
    return idx[keep].tolist()


def _write_arrays(folder: Path, renders: _Renders, classes: list[tuple[int, list[int]]], side: int) -> str:
    """Write ``images/labels/faces.npy`` class by class; return the SHA-256 of the three files."""
    rows = [row for _, members in classes for row in members]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(m) for _, m in classes])
    with open(folder / "images.npy", "wb") as fh:  # streamed: one render at a time
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False,
                                                   "shape": (len(rows), 1, side, side)})
        fh.writelines(renders.image(row).tobytes() for row in rows)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "faces.npy", renders.face[np.array(rows, dtype=np.int64)] if rows else np.zeros(0, np.int32))
    digest = hashlib.sha256()
    for name in ARRAYS:
        with open(folder / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def build_glyphs(out: str | os.PathLike, faces: list[fonts.Face] | None = None, code_points: list[int] | None = None,
                 processes: int = 2, side: int = SIDE, min_instances: int = MIN_INSTANCES,
                 font_list: str = "core") -> dict:
    """Render, clean and store the glyphs dataset in ``out``; returns the manifest.

    Args:
        out: the dataset folder (replaced atomically; refused if it holds files dmlkit did not write).
        faces: the faces to draw (default: :func:`fonts.pinned_faces` of ``font_list``).
        code_points: candidates (default :func:`codepoints.candidate_code_points`).
        processes: rendering processes (at most 2 on the 2-core machines this was sized for).
        min_instances: classes with fewer instances are not stored.
        font_list: ``core`` (for ``glyphs``) or ``large`` (for ``glyphs-large``): the pinned list
            (``src/dmlkit/data/fonts/<list>.txt``) whose packages' faces are drawn, whatever else is
            installed; recorded in the manifest (the readers check it).

    Raises:
        DatasetError: ``out`` holds files dmlkit did not write; a package of the list is not installed.
    """
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise DatasetError(f"{out} exists and holds files dmlkit did not write; choose another --data-root or empty it")
    if faces is None:
        faces = fonts.pinned_faces(font_list)
    if not faces:
        raise DatasetError(f"no TrueType/OpenType faces of the {font_list} font list found in "
                           f"{', '.join(fonts.FONT_DIRS)}; install them: sudo apt-get install "
                           f"$(grep -v '^#' {fonts.list_path(font_list)})")
    candidates = codepoints.candidate_code_points() if code_points is None else sorted(set(code_points))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        renders, pairs = _render_all(faces, candidates, side, processes, work)
        log.info("glyphs: %d renders from %d faces in %.0f s", len(renders.cp), len(faces), time.perf_counter() - start)
        letters: dict[int, dict[int, np.ndarray]] = {}
        for row in np.flatnonzero(np.isin(renders.cp, [ord(c) for c in LATIN])):
            letters.setdefault(int(renders.cp[row]), {})[int(renders.face[row])] = renders.desc[row].astype(np.float32)
        pictures = clean.picture_faces(letters)
        kept = sorted(set(renders.face.tolist()) - set(pictures))
        groups = _homoglyphs(renders, pairs, kept)
        members = {}
        for cp, rep in groups.items():
            members.setdefault(rep, []).append(cp)
        selected = [(cls, _deduplicate(renders, rows)) for cls, rows in sorted(_instances(renders, pairs, set(kept), groups).items())]
        selected = [(cls, rows) for cls, rows in selected if len(rows) >= min_instances]
        checksum = _write_arrays(work, renders, selected, side)
        manifest = _manifest(faces, renders, pictures, selected, members, candidates, checksum, side)
        manifest["font_list"] = font_list
        manifest["seconds"] = round(time.perf_counter() - start, 1)
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        renders.close()
        (work / "renders.u8").unlink()
        _replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    log.info("glyphs: %d classes, %d images in %.0f s -> %s", len(selected), manifest["counts"]["images"],
             manifest["seconds"], out)
    return manifest


def _replace(work: Path, out: Path) -> None:
    """Move the finished ``work`` folder to ``out``; a previous build (ours: it has a manifest) goes."""
    if out.exists():
        old = out.with_name(f".{out.name}-old-{os.getpid()}")
        out.rename(old)
        work.rename(out)
        shutil.rmtree(old)
    else:
        work.rename(out)


def _manifest(faces, renders, pictures, selected, members, candidates, checksum, side) -> dict:
    from PIL import __version__ as pillow
    from PIL import features

    rendered = np.bincount(renders.face, minlength=len(faces)) if len(renders.face) else np.zeros(len(faces), int)
    listed = []
    for i, face in enumerate(faces):
        status = "kept" if rendered[i] else "no candidate code point"
        if i in pictures:
            status = f"picture font (letter similarity {pictures[i]:.2f}; rule: < {clean.PICTURE_SIMILARITY}, or < " \
                     f"{clean.PICTURE_NEAREST:.0%} of letters nearest to their own)"
        listed.append({**face.to_json(), "rendered": int(rendered[i]), "status": status})
    classes = [{"id": i, "name": codepoints.class_name(sorted(members.get(cls, [cls]))),
                "code_points": sorted(members.get(cls, [cls])), "instances": len(rows)}
               for i, (cls, rows) in enumerate(selected)]
    return {
        "name": "glyphs", "format": FORMAT, "side": side,
        "rules": {"cap": CAP, "baseline": BASELINE, "body": BODY, "near": clean.NEAR,
                  "min_votes": clean.MIN_VOTES, "picture_similarity": clean.PICTURE_SIMILARITY,
                  "picture_nearest": clean.PICTURE_NEAREST,
                  "max_styles": fonts.MAX_STYLES},
        "renderer": {"pillow": pillow, "freetype": features.version("freetype2")},
        "candidates": len(candidates),
        "counts": {"faces": len(faces), "faces_used": int(sum(1 for f in listed if f["status"] == "kept")),
                   "picture_fonts": len(pictures), "renders": len(renders.cp), "classes": len(classes),
                   "images": int(sum(len(r) for _, r in selected))},
        "sha256": checksum, "classes": classes, "faces": listed,
    }
