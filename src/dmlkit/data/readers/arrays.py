"""In-memory datasets: MNIST and Fashion-MNIST (IDX), CIFAR-10 (python pickles), scikit-learn digits.

Each reader returns a :class:`DatasetRecords` with uint8 ``[N, C, H, W]`` images and the
dataset's standard train/test split (the classes are shared between the splits).
"""
from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np

from dmlkit.data.base import DatasetError, DatasetRecords
from dmlkit.data.roots import find_dataset

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_STEMS = {
    "train-images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train-labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test-images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test-labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzipped): magic ``00 00 <type> <ndim>``, big-endian int32 dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read IDX file {path} ({err}); the file is corrupt — re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    offset = 4 + 4 * ndim
    if len(raw) - offset != expected:
        raise DatasetError(
            f"{path}: header says {tuple(dims)} ({expected} bytes) but the file holds {len(raw) - offset} bytes; "
            f"the file is truncated or corrupt — re-download it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(tuple(dims))


def _idx_file(folder: Path, key: str) -> Path | None:
    for stem in IDX_STEMS[key]:
        for suffix in (".gz", ""):
            if (folder / (stem + suffix)).is_file():
                return folder / (stem + suffix)
    return None


def _has_idx(folder: Path) -> bool:
    return all(_idx_file(folder, key) is not None for key in IDX_STEMS)


def read_mnist_like(name: str, root: str | None = None) -> DatasetRecords:
    """MNIST or Fashion-MNIST from the four IDX files (gzipped or not): 60,000 train, 10,000 test."""
    if name == "fashion-mnist":
        subdirs = ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST")
        how = ("Install the Debian package (sudo apt-get install dataset-fashion-mnist) or download the four "
               "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist (data/fashion).")
        class_names = FASHION_CLASSES
    else:
        subdirs = ("mnist", "MNIST/raw", "MNIST")
        how = ("Download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
               "t10k-labels-idx1-ubyte.gz from https://ossci-datasets.s3.amazonaws.com/mnist/ into one folder.")
        class_names = [str(i) for i in range(10)]
    folder = find_dataset(name, root, _has_idx, subdirs, how)
    parts = {key: read_idx(_idx_file(folder, key)) for key in IDX_STEMS}  # type: ignore[arg-type]
    for side in ("train", "test"):
        images, labels = parts[f"{side}-images"], parts[f"{side}-labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(
                f"{name} in {folder}: {side} images {images.shape} and labels {labels.shape} do not match"
            )
    images = np.concatenate([parts["train-images"], parts["test-images"]])[:, None].astype(np.uint8)
    labels = np.concatenate([parts["train-labels"], parts["test-labels"]]).astype(np.int64)
    splits = np.array(["train"] * len(parts["train-labels"]) + ["test"] * len(parts["test-labels"]))
    return DatasetRecords(name, images, labels, splits, class_names, image_size=images.shape[-1], channels=1)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (and the built-in containers pickle encodes itself)."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict:
    """Safely unpickle a CIFAR batch (a dict of bytes keys to lists/arrays); bytes keys become str."""
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DatasetError(f"cannot read CIFAR batch {path} ({err}); the file is corrupt — re-download it") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict in a CIFAR batch, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def read_cifar10(root: str | None = None) -> DatasetRecords:
    """CIFAR-10 from ``cifar-10-batches-py`` (python pickles): 50,000 train, 10,000 test, 32x32 RGB."""
    how = ("Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (md5 "
           "c58f30108f718f92721af3b95e74349a) and extract it.")
    folder = find_dataset(
        "cifar10", root, lambda d: all((d / f).is_file() for f in CIFAR_FILES),
        ("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"), how,
    )
    images, labels, splits = [], [], []
    for fname in CIFAR_FILES:
        batch = load_pickle(folder / fname)
        if "data" not in batch or "labels" not in batch:
            raise DatasetError(f"{folder / fname}: a CIFAR batch needs 'data' and 'labels', has {sorted(batch)}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch["labels"]):
            raise DatasetError(f"{folder / fname}: data {data.shape} and {len(batch['labels'])} labels do not fit CIFAR-10")
        images.append(data.reshape(-1, 3, 32, 32))
        batch_labels = np.asarray(batch["labels"], dtype=np.int64)
        if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() > 9):
            bad = int(batch_labels[(batch_labels < 0) | (batch_labels > 9)][0])
            raise DatasetError(f"{folder / fname}: label {bad} is not a CIFAR-10 class (0-9); re-download the batches")
        labels.append(batch_labels)
        splits += ["test" if fname == "test_batch" else "train"] * len(data)
    names = None
    if (folder / "batches.meta").is_file():
        meta = load_pickle(folder / "batches.meta")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])] or None
    names = names or list(CIFAR10_CLASSES)  # the batches' meta file is optional; CIFAR-10's names are fixed
    return DatasetRecords("cifar10", np.concatenate(images), np.concatenate(labels), np.array(splits),
                          names, image_size=32, channels=3)


def read_digits(root: str | None = None) -> DatasetRecords:
    """scikit-learn's 8x8 digits (1,797 images, bundled with scikit-learn, no download).

    Pixels 0..16 are scaled to uint8 0..255 (``round(v * 255 / 16)``) and kept at 8x8
    (``image_size=8``, preset ``grey28`` at the input size). There is no standard split: the first
    two thirds (rounded down) of each class, in file order, are ``train`` (1,195), the rest ``test`` (602).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(labels), dtype=np.int64)
    starts = np.searchsorted(labels[order], labels[order])
    rank[order] = np.arange(len(labels)) - starts  # position of each image within its class
    counts = np.bincount(labels)
    splits = np.where(rank < np.floor(counts[labels] * 2 / 3), "train", "test")
    return DatasetRecords("digits", images, labels, splits, [str(i) for i in range(10)], image_size=8, channels=1)
