"""Tiny datasets written in their real on-disk layouts (EVALUATION.md §5), for the data tests.

Every writer takes a folder (a pytest ``tmp_path``), writes a few small images per class and the
annotation files exactly as the official downloads lay them out, and returns the dataset folder.
``tiny_records`` builds a small in-memory dataset instead, and ``restored_dataset_registry`` undoes
``register_dataset`` calls (the ``dataset_registry`` fixture in conftest.py wraps it).
"""
from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dmlkit.data.base import DatasetRecords


def write_image(path: Path, seed: int, size: tuple[int, int] = (12, 10), fmt: str | None = None) -> Path:
    """A small random RGB image (JPEG or PNG by suffix)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def write_idx_file(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_mnist(folder: Path, n_train: int = 12, n_test: int = 6, gz: bool = True, classes: int = 3) -> Path:
    """The four IDX files of MNIST / Fashion-MNIST; labels cycle 0..classes-1, pixel [0,0] = index."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for stem, n, offset in (("train", n_train, 0), ("t10k", n_test, n_train)):
        images = np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(offset, offset + n)
        write_idx_file(folder / f"{stem}-images-idx3-ubyte{suffix}", images, gz)
        write_idx_file(folder / f"{stem}-labels-idx1-ubyte{suffix}", np.arange(n) % classes, gz)
    return folder


def write_cifar10(root: Path, per_batch: int = 4) -> Path:
    """``cifar-10-batches-py`` with python-pickled dict batches (bytes keys, as the download has)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        data = np.random.default_rng(b).integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [(b + i) % 10 for i in range(per_batch)],
                 b"data": data, b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cub(root: Path, classes: int = 4, per_class: int = 3) -> Path:
    """``CUB_200_2011/`` with images/<NNN.Name>/*.jpg, images.txt, image_class_labels.txt, classes.txt
    and a train_test_split.txt that must be ignored (it marks every image 'train')."""
    folder = root / "CUB_200_2011"
    lines, labels, names, split = [], [], [], []
    image_id = 0
    for c in range(1, classes + 1):
        cname = f"{c:03d}.Bird_{c}"
        names.append(f"{c} {cname}")
        for j in range(per_class):
            image_id += 1
            rel = f"{cname}/Bird_{c}_{j:04d}_{image_id}.jpg"
            write_image(folder / "images" / rel, image_id)
            lines.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} 1")
    for fname, rows in (("images.txt", lines), ("image_class_labels.txt", labels), ("classes.txt", names),
                        ("train_test_split.txt", split)):
        (folder / fname).write_text("\n".join(rows) + "\n")
    return folder


def _cars_struct(rows: list[dict]) -> np.ndarray:
    fields = list(rows[0])
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        arr[0, i] = tuple(np.array([[v]]) if not isinstance(v, str) else v for v in row.values())
    return arr


def write_cars(root: Path, classes: int = 4, per_class: int = 3) -> Path:
    """``car_ims/000001.jpg ...`` plus ``cars_annos.mat`` (relative_im_path, bbox, class, test)."""
    import scipy.io

    folder = root / "cars196"
    rows = []
    for i in range(classes * per_class):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_image(folder / rel, 100 + i)
        rows.append({"relative_im_path": rel, "bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 8, "bbox_y2": 8,
                     "class": i // per_class + 1, "test": i % 2})
    names = np.array([f"Car {c}" for c in range(1, classes + 1)], dtype=object).reshape(1, -1)
    scipy.io.savemat(str(folder / "cars_annos.mat"), {"annotations": _cars_struct(rows), "class_names": names})
    return folder


def write_cars_devkit(root: Path, classes: int = 4, per_class: int = 4) -> Path:
    """``cars_train/``, ``cars_test/`` and ``devkit/cars_train_annos.mat``,
    ``devkit/cars_test_annos_withlabels.mat``, ``devkit/cars_meta.mat``: half of each class per side."""
    import scipy.io

    folder = root / "stanford_cars"
    for side in ("train", "test"):
        rows = []
        for i in range(classes * per_class // 2):
            fname = f"{i + 1:05d}.jpg"
            write_image(folder / f"cars_{side}" / fname, 200 + i + (0 if side == "train" else 1000))
            rows.append({"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 8, "bbox_y2": 8,
                         "class": i % classes + 1, "fname": fname})
        name = "cars_train_annos.mat" if side == "train" else "cars_test_annos_withlabels.mat"
        (folder / "devkit").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(folder / "devkit" / name), {"annotations": _cars_struct(rows)})
    names = np.array([f"Car {c}" for c in range(1, classes + 1)], dtype=object).reshape(1, -1)
    scipy.io.savemat(str(folder / "devkit" / "cars_meta.mat"), {"class_names": names})
    return folder


def write_sop(root: Path, train_classes: int = 3, test_classes: int = 2, per_class: int = 2) -> Path:
    """``Stanford_Online_Products/`` with <super>_final/*.JPG and Ebay_train.txt / Ebay_test.txt."""
    folder = root / "Stanford_Online_Products"
    supers = ["bicycle", "chair"]
    image_id, class_id = 0, 0
    for split, n_cls in (("train", train_classes), ("test", test_classes)):
        lines = ["image_id class_id super_class_id path"]
        for _ in range(n_cls):
            class_id += 1
            sup = class_id % 2
            for j in range(per_class):
                image_id += 1
                rel = f"{supers[sup]}_final/{class_id * 1000}_{j}.JPG"
                write_image(folder / rel, 300 + image_id, fmt="JPEG")
                lines.append(f"{image_id} {class_id} {sup + 1} {rel}")
        (folder / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_inshop(root: Path) -> Path:
    """``img/<MEN|WOMEN>/<cat>/id_XXXXXXXX/*.jpg`` plus ``Eval/list_eval_partition.txt``: items 1, 2
    train; items 3, 4 each with query and gallery images."""
    folder = root / "inshop"
    layout = [(1, "train", 2), (2, "train", 3), (3, "query", 1), (3, "gallery", 2), (4, "query", 2), (4, "gallery", 1)]
    rows = []
    k = 0
    for item, status, n in layout:
        for _ in range(n):
            k += 1
            rel = f"img/WOMEN/Dresses/id_{item:08d}/{k:02d}_1_front.jpg"
            write_image(folder / rel, 400 + k)
            rows.append(f"{rel} id_{item:08d} {status}")
    (folder / "Eval").mkdir(parents=True, exist_ok=True)
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (folder / "Eval" / "list_eval_partition.txt").write_text(text)
    return folder


def write_folder(root: Path, classes: int = 4, per_class: int = 2, presplit: bool = False) -> Path:
    """``root/<class>/*.png`` or, pre-split, ``root/{train,test}/<class>/*.png`` (classes shared)."""
    folder = root / "images"
    sides = ("train", "test") if presplit else ("",)
    k = 0
    for side in sides:
        for c in range(classes):
            for j in range(per_class):
                k += 1
                write_image(folder / side / f"cls_{c}" / f"{j}.png", 500 + k)
    (folder / "README.txt").write_text("not a class folder")
    return folder


def write_csv(root: Path, header: str = "path,label,split,labeled", rows: list[str] | None = None) -> Path:
    """``root/data.csv`` plus images ``root/pics/<i>.png``; default rows: 3 classes x 2 train + 2 test."""
    if rows is None:
        rows = []
        for i in range(12):
            c, side = i % 3, "train" if i < 6 else "test"
            labeled = "" if "labeled" not in header else ("," + ("1" if i % 2 == 0 else "0"))
            rows.append(f"pics/{i}.png,bird_{c},{side}{labeled}")
    for i in range(12):
        write_image(root / "pics" / f"{i}.png", 600 + i)
    path = root / "data.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def tiny_records(name: str = "tiny", classes: int = 4, train_per_class: int = 8, test_per_class: int = 4,
                 seed: int = 0) -> DatasetRecords:
    """In-memory 28x28 grey images: class c lights one cell of a 2x2 (or finer) grid over noise, so any
    network tells the classes apart; ``train_per_class`` train and ``test_per_class`` test images each."""
    from dmlkit.data.base import DatasetRecords

    per_class = train_per_class + test_per_class
    labels = np.repeat(np.arange(classes), per_class)
    splits = np.tile(np.array(["train"] * train_per_class + ["test"] * test_per_class), classes)
    images = np.random.default_rng(seed).integers(0, 60, (len(labels), 1, 28, 28), dtype=np.uint8)
    side = int(np.ceil(np.sqrt(classes)))
    cell = 28 // side
    for i, c in enumerate(labels):
        row, col = divmod(int(c), side)
        images[i, 0, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] += 150
    return DatasetRecords(name, images, labels, splits, [f"class_{c}" for c in range(classes)])


@contextmanager
def restored_dataset_registry() -> Iterator[None]:
    """Undo every ``register_dataset`` made inside the block (new names and overwritten ones)."""
    from dmlkit.data import registry

    saved = dict(registry._READERS)
    try:
        yield
    finally:
        registry._READERS.clear()
        registry._READERS.update(saved)
