"""Bring-your-own data: an image folder (``folder:PATH``) and the CSV contract (``csv:PATH``).

Folder layouts:

- ``PATH/<class>/*.jpg`` (one sub-folder per class): the first ⌊C/2⌋ classes in sorted name order
  are ``train``, the rest ``test`` (a class-disjoint split, as the DML benchmarks use).
- ``PATH/{train,test}/<class>/*`` (pre-split, the zbr17/DRML README layout; ``query`` and
  ``gallery`` folders are accepted too): each image keeps its folder's split; class ids run over
  the union of class names.

CSV contract: a header with columns ``path,label,split`` and optionally ``labeled``; ``path`` is
relative to the CSV's folder (or absolute); ``split`` is train, test, query or gallery; ``labeled``
(1/0, true/false, yes/no) says which training labels a semi-supervised method sees; ``label`` may
be empty only on unlabeled training rows (class unknown, stored as -1). Class ids are the sorted
label values (numerically when every label is an integer).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from dmlkit.data.base import DatasetError, DatasetRecords
from dmlkit.data.images import IMAGE_EXTENSIONS, check_files_exist

SPLIT_TAGS = ("train", "test", "query", "gallery")
CSV_REQUIRED = ("path", "label", "split")
CSV_OPTIONAL = ("labeled",)
_TRUE, _FALSE = {"1", "true", "yes", "y", "t"}, {"0", "false", "no", "n", "f"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and _images_in(d))


def read_folder(path: str) -> DatasetRecords:
    """An image folder, flat (``PATH/<class>/*``) or pre-split (``PATH/{train,test}/<class>/*``)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"folder:{path}: {root.resolve()} is not a folder; give PATH/<class>/*.jpg or "
                           f"PATH/{{train,test}}/<class>/*.jpg")
    split_dirs = [root / t for t in SPLIT_TAGS if (root / t).is_dir()]
    presplit = bool(split_dirs) and (root / "train").is_dir()
    if presplit:
        groups = [(d.name, c) for d in split_dirs for c in _class_folders(d)]
    else:
        groups = [("", c) for c in _class_folders(root)]
    if not groups:
        raise DatasetError(
            f"folder:{path}: no class sub-folders with images ({', '.join(IMAGE_EXTENSIONS)}) in {root.resolve()}; "
            f"expected PATH/<class>/*.jpg or PATH/{{train,test}}/<class>/*.jpg"
        )
    names = sorted({c.name for _, c in groups})
    index = {n: i for i, n in enumerate(names)}
    files, labels, splits = [], [], []
    for tag, class_dir in groups:
        images = _images_in(class_dir)
        files += [str(p) for p in images]
        labels += [index[class_dir.name]] * len(images)
        splits += [tag] * len(images)
    labels_arr = np.array(labels, dtype=np.int64)
    if presplit:
        splits_arr = np.array(splits)
    else:
        splits_arr = np.where(labels_arr < len(names) // 2, "train", "test")
        if len(names) < 2:
            raise DatasetError(f"folder:{path}: a flat folder needs at least 2 classes for a train/test split, found {names}")
    return DatasetRecords(f"folder:{path}", files, labels_arr, splits_arr, names, image_size=224, channels=3)


def _class_ids(values: list[str]) -> tuple[np.ndarray, list[str]]:
    known = [v for v in values if v != ""]
    try:
        order = sorted(set(known), key=int)
    except ValueError:
        order = sorted(set(known))
    index = {v: i for i, v in enumerate(order)}
    return np.array([index.get(v, -1) for v in values], dtype=np.int64), order


def read_csv(path: str) -> DatasetRecords:
    """The CSV contract ``path,label,split[,labeled]`` (see the module docstring)."""
    csv_path = Path(path).expanduser()
    if not csv_path.is_file():
        raise DatasetError(f"csv:{path}: file {csv_path.resolve()} does not exist")
    raw = csv_path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Excel's "CSV UTF-8") is not part of the header
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise DatasetError(
            f"csv:{path}: line {line}, column {column}: byte 0x{raw[error.start]:02x} is not UTF-8; the CSV must be "
            "UTF-8 text (re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`)"
        ) from None
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        unknown = [c for c in columns if c not in CSV_REQUIRED + CSV_OPTIONAL]
        missing = [c for c in CSV_REQUIRED if c not in columns]
        if unknown or missing:
            problems = ([f"unknown column(s) {unknown}"] if unknown else []) + ([f"missing column(s) {missing}"] if missing else [])
            raise DatasetError(
                f"csv:{path}: {' and '.join(problems)}; the header must be path,label,split with an optional "
                f"labeled column"
            )
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise DatasetError(f"csv:{path}: no rows after the header")
    splits = np.array([r["split"] for r in rows])
    bad = sorted(set(splits.tolist()) - set(SPLIT_TAGS))
    if bad:
        raise DatasetError(f"csv:{path}: unknown split value(s) {bad}; use train, test, query or gallery")
    labeled = None
    if "labeled" in columns:
        flags = [r["labeled"].lower() for r in rows]
        wrong = sorted(set(flags) - _TRUE - _FALSE)
        if wrong:
            raise DatasetError(f"csv:{path}: labeled must be 1/0 (or true/false), got {wrong}")
        labeled = np.array([f in _TRUE for f in flags])
    labels, names = _class_ids([r["label"] for r in rows])
    unknown_ok = (splits == "train") & ~labeled if labeled is not None else np.zeros(len(rows), dtype=bool)
    no_label = np.flatnonzero((labels < 0) & ~unknown_ok)
    if len(no_label):
        raise DatasetError(
            f"csv:{path}: row {no_label[0] + 2} has an empty label; only unlabeled training rows (labeled=0) may omit it"
        )
    base = csv_path.parent
    files = [str(p if (p := Path(r["path"]).expanduser()).is_absolute() else base / p) for r in rows]
    check_files_exist(f"csv:{path}", files, "Paths in the CSV are relative to the CSV file's folder.")
    return DatasetRecords(f"csv:{path}", files, labels, splits, names, image_size=224, channels=3, labeled=labeled)
