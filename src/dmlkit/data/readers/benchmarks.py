"""File-backed DML benchmarks with class-disjoint (zero-shot) splits (EVALUATION.md §5).

- CUB-200-2011: classes 1–100 train, 101–200 test (``train_test_split.txt`` is ignored).
- Cars-196: classes 1–98 train, 99–196 test (``cars_annos.mat``'s test flag is ignored), or the
  devkit's ``cars_train``/``cars_test`` halves merged first.
- Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt``.
- In-shop: ``Eval/list_eval_partition.txt`` (train / query / gallery; relevance = same item).

Labels are 0-based and contiguous over the whole dataset (sorted original ids). Images stay on
disk (absolute paths); the network input is 224 (stored 256, see :mod:`dmlkit.data.images`).
Bounding boxes (Cars) are not used: the field trains on whole images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dmlkit.data.base import DatasetError, DatasetRecords
from dmlkit.data.images import check_files_exist
from dmlkit.data.roots import find_dataset

#: full-dataset sizes (EVALUATION.md §5): classes, then images per split tag
EXPECTED = {
    "cub200": (200, {"train": 5864, "test": 5924}),
    "cars196": (196, {"train": 8054, "test": 8131}),
    "sop": (22634, {"train": 59551, "test": 60502}),
    "inshop": (7982, {"train": 25882, "query": 14218, "gallery": 12612}),
}


def read_rows(path: Path, n_cols: int, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of a text file (the last column may hold spaces)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[skip:]
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from None
    rows = [line.split(maxsplit=n_cols - 1) for line in lines if line.strip()]
    bad = next((i for i, row in enumerate(rows) if len(row) != n_cols), None)
    if bad is not None:
        raise DatasetError(f"{path}: expected {n_cols} columns per line, line {bad + 1 + skip} has {rows[bad]}")
    return rows


def class_ids(values: list[str], path: Path) -> np.ndarray:
    """Integer class ids read from ``path``; a non-integer names the file and the value."""
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        bad = next(v for v in values if not v.lstrip("-").isdigit())
        raise DatasetError(f"{path}: class id '{bad}' is not an integer; re-download the annotation file") from None


def _mat_field(ann: np.ndarray, field: str, path: Path) -> np.ndarray:
    if ann.dtype.names is None or field not in ann.dtype.names:
        raise DatasetError(f"{path}: the annotations have no '{field}' field (fields: {ann.dtype.names}); "
                           "use the original cars_annos.mat or devkit files")
    return ann[field]


def contiguous(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, unique_ids)``: 0-based contiguous labels over the sorted unique ``ids``."""
    unique, labels = np.unique(ids, return_inverse=True)
    return labels.astype(np.int64), unique


def half_split(labels: np.ndarray) -> np.ndarray:
    """``train`` for the first ⌊C/2⌋ sorted classes, ``test`` for the rest (CUB 100/100, Cars 98/98)."""
    n_classes = int(labels.max()) + 1
    return np.where(labels < n_classes // 2, "train", "test")


def check_counts(records: DatasetRecords, folder: Path) -> DatasetRecords:
    """On a full-size dataset (all classes present), assert the image counts of EVALUATION.md §5."""
    n_classes, expected = EXPECTED[records.name]
    if len(np.unique(records.labels)) != n_classes:
        return records
    tags, counts = np.unique(records.splits, return_counts=True)
    found = dict(zip(tags.tolist(), counts.tolist()))
    if found != expected:
        raise DatasetError(
            f"{records.name} in {folder}: split sizes {found}, expected {expected} (EVALUATION.md §5); "
            f"the annotation files do not match the images — re-download the dataset"
        )
    return records


def read_cub200(root: str | None = None) -> DatasetRecords:
    """CUB-200-2011: ``images.txt`` (id path), ``image_class_labels.txt`` (id class), ``classes.txt``."""
    how = ("Download CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vp158 and extract it "
           "(the folder holding images.txt and images/).")
    folder = find_dataset("cub200", root, lambda d: (d / "images.txt").is_file() and (d / "image_class_labels.txt").is_file(),
                          ("CUB_200_2011", "cub200/CUB_200_2011", "cub200"), how)
    paths = dict(read_rows(folder / "images.txt", 2))
    classes = dict(read_rows(folder / "image_class_labels.txt", 2))
    if set(paths) != set(classes):
        raise DatasetError(f"{folder}: images.txt and image_class_labels.txt list different image ids")
    if not paths:
        raise DatasetError(f"{folder / 'images.txt'} lists no images; re-extract CUB_200_2011.tgz")
    ids = sorted(paths, key=int)
    files = [str(folder / "images" / paths[i]) for i in ids]
    check_files_exist("cub200", files)
    labels, unique = contiguous(class_ids([classes[i] for i in ids], folder / "image_class_labels.txt"))
    names = None
    if (folder / "classes.txt").is_file():
        by_id = {int(k): v for k, v in read_rows(folder / "classes.txt", 2)}
        names = [by_id.get(int(c), str(c)) for c in unique]
    records = DatasetRecords("cub200", files, labels, half_split(labels), names, image_size=224, channels=3)
    return check_counts(records, folder)


def _mat_annotations(path: Path) -> np.ndarray:
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True)
    except (MatReadError, OSError, ValueError, TypeError, NotImplementedError, IndexError) as err:  # scipy's errors for a bad file
        raise DatasetError(f"cannot read {path} ({type(err).__name__}: {err}); re-download it") from None
    if "annotations" not in mat:
        raise DatasetError(f"{path} has no 'annotations' struct (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    return np.atleast_1d(mat["annotations"])


def _cars_devkit_files(d: Path) -> tuple[Path, Path] | None:
    for base in (d, d / "devkit"):
        train, test = base / "cars_train_annos.mat", base / "cars_test_annos_withlabels.mat"
        if train.is_file() and test.is_file():
            return train, test
    return None


def read_cars196(root: str | None = None) -> DatasetRecords:
    """Stanford Cars: ``cars_annos.mat`` (relative path, bbox, class 1–196) with ``car_ims/``, or the
    devkit halves ``cars_train/`` + ``cars_test/`` with ``cars_train_annos.mat`` and
    ``cars_test_annos_withlabels.mat`` (in the folder or its ``devkit/``), merged."""
    how = ("Get car_ims.tgz and cars_annos.mat (Stanford Cars, e.g. the Kaggle or Hugging Face mirrors of "
           "http://ai.stanford.edu/~jkrause/cars/car_dataset.html) and extract car_ims/ next to cars_annos.mat.")
    folder = find_dataset(
        "cars196", root,
        lambda d: (d / "cars_annos.mat").is_file() or _cars_devkit_files(d) is not None,
        ("cars196", "stanford_cars", "cars"), how,
    )
    if (folder / "cars_annos.mat").is_file():
        ann = _mat_annotations(folder / "cars_annos.mat")
        files = [str(folder / str(p)) for p in _mat_field(ann, "relative_im_path", folder / "cars_annos.mat")]
        ids = _mat_field(ann, "class", folder / "cars_annos.mat").astype(np.int64)
    else:
        train_mat, test_mat = _cars_devkit_files(folder)  # type: ignore[misc]
        parts = [(_mat_annotations(train_mat), "cars_train"), (_mat_annotations(test_mat), "cars_test")]
        files = [str(folder / sub / str(f)) for (ann, sub), mat in zip(parts, (train_mat, test_mat))
                 for f in _mat_field(ann, "fname", mat)]
        ids = np.concatenate([_mat_field(ann, "class", mat).astype(np.int64)
                              for (ann, _), mat in zip(parts, (train_mat, test_mat))])
    check_files_exist("cars196", files)
    labels, unique = contiguous(ids)
    names = None
    for meta in (folder / "cars_annos.mat", folder / "devkit" / "cars_meta.mat", folder / "cars_meta.mat"):
        if meta.is_file():
            import scipy.io

            mat = scipy.io.loadmat(str(meta), squeeze_me=True)
            if "class_names" in mat:
                all_names = [str(n) for n in np.atleast_1d(mat["class_names"])]
                names = [all_names[c - 1] if 0 < c <= len(all_names) else str(c) for c in unique]
                break
    records = DatasetRecords("cars196", files, labels, half_split(labels), names, image_size=224, channels=3)
    return check_counts(records, folder)


def read_sop(root: str | None = None) -> DatasetRecords:
    """Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt`` with header
    ``image_id class_id super_class_id path``; paths relative to the folder."""
    how = ("Download Stanford_Online_Products.zip (https://cvgl.stanford.edu/projects/lifted_struct/) and "
           "extract it (the folder holding Ebay_train.txt).")
    folder = find_dataset("sop", root, lambda d: (d / "Ebay_train.txt").is_file() and (d / "Ebay_test.txt").is_file(),
                          ("Stanford_Online_Products", "sop/Stanford_Online_Products", "sop"), how)
    files, ids, splits = [], [], []
    for split in ("train", "test"):
        path = folder / f"Ebay_{split}.txt"
        header = path.read_text(encoding="utf-8").split("\n", 1)[0].split()
        if header != ["image_id", "class_id", "super_class_id", "path"]:
            raise DatasetError(f"{path}: header {header}, expected 'image_id class_id super_class_id path'")
        rows = read_rows(path, 4, skip=1)
        files += [str(folder / r[3]) for r in rows]
        ids += class_ids([r[1] for r in rows], path).tolist()
        splits += [split] * len(rows)
    check_files_exist("sop", files)
    labels, _ = contiguous(np.array(ids))
    records = DatasetRecords("sop", files, labels, np.array(splits), None, recall_at=(1, 10, 100, 1000),
                             image_size=224, channels=3)
    return check_counts(records, folder)


def read_inshop(root: str | None = None) -> DatasetRecords:
    """In-shop Clothes Retrieval: ``Eval/list_eval_partition.txt`` (line 1 a count, line 2 the header
    ``image_name item_id evaluation_status``); classes are item ids; splits train/query/gallery."""
    how = ("Download the In-shop Clothes Retrieval Benchmark of DeepFashion "
           "(https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html): img.zip and "
           "Eval/list_eval_partition.txt, extracted into one folder.")
    folder = find_dataset("inshop", root, lambda d: (d / "Eval" / "list_eval_partition.txt").is_file(),
                          ("inshop", "In-shop", "DeepFashion/In-shop"), how)
    path = folder / "Eval" / "list_eval_partition.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < 2 or lines[1].split() != ["image_name", "item_id", "evaluation_status"]:
        raise DatasetError(f"{path}: line 2 must be the header 'image_name item_id evaluation_status'")
    rows = read_rows(path, 3, skip=2)
    if lines[0].strip().isdigit() and int(lines[0]) != len(rows):
        raise DatasetError(f"{path}: line 1 says {int(lines[0])} images but {len(rows)} are listed")
    statuses = np.array([r[2] for r in rows])
    bad = sorted(set(statuses.tolist()) - {"train", "query", "gallery"})
    if bad:
        raise DatasetError(f"{path}: unknown evaluation_status {bad}; expected train, query or gallery")
    base = folder / "Img" if rows and not (folder / rows[0][0]).exists() and (folder / "Img" / rows[0][0]).exists() else folder
    files = [str(base / r[0]) for r in rows]
    check_files_exist("inshop", files)
    labels, unique = contiguous(np.array([r[1] for r in rows]))
    records = DatasetRecords("inshop", files, labels, statuses, [str(u) for u in unique],
                             recall_at=(1, 10, 20, 30, 40, 50), image_size=224, channels=3)
    return check_counts(records, folder)
