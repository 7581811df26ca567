"""Dataset names as the CLI spells them, and :func:`load_records`."""
from __future__ import annotations

from collections.abc import Callable

from dmlkit.data import readers
from dmlkit.data.base import DatasetError, DatasetRecords

_READERS: dict[str, tuple[Callable[[str | None], DatasetRecords], str]] = {
    "fashion-mnist": (lambda root: readers.read_mnist_like("fashion-mnist", root),
                      "Fashion-MNIST, 28x28 grey, 10 classes, 60,000 train / 10,000 test (IDX files; Debian dataset-fashion-mnist)"),
    "mnist": (lambda root: readers.read_mnist_like("mnist", root),
              "MNIST digits, 28x28 grey, 10 classes, 60,000 train / 10,000 test (IDX files)"),
    "cifar10": (readers.read_cifar10, "CIFAR-10, 32x32 colour, 10 classes, 50,000 train / 10,000 test (python pickles)"),
    "digits": (readers.read_digits,
               "scikit-learn 8x8 digits, 10 classes, 1,797 images, 1,195 train / 602 test (bundled, no download)"),
    "cub200": (readers.read_cub200, "CUB-200-2011 birds, zero-shot: classes 1-100 train / 101-200 test"),
    "cars196": (readers.read_cars196, "Stanford Cars-196, zero-shot: classes 1-98 train / 99-196 test"),
    "sop": (readers.read_sop, "Stanford Online Products, zero-shot: Ebay_train.txt / Ebay_test.txt"),
    "inshop": (readers.read_inshop, "In-shop Clothes Retrieval, zero-shot: train items / query vs gallery"),
}
_PREFIXED = {
    "folder:PATH": "an image folder: PATH/<class>/* (first half of the classes train) or PATH/{train,test}/<class>/*",
    "csv:PATH": "a CSV with columns path,label,split[,labeled]; paths relative to the CSV's folder",
}


def list_datasets() -> dict[str, str]:
    """Every dataset name :func:`load_records` accepts, with a one-line description."""
    return {**{name: desc for name, (_, desc) in _READERS.items()}, **_PREFIXED}


def load_records(name: str, root: str | None = None) -> DatasetRecords:
    """Read a dataset by name (``fashion-mnist``, ``mnist``, ``cifar10``, ``digits``, ``cub200``,
    ``cars196``, ``sop``, ``inshop``, ``folder:PATH``, ``csv:PATH``).

    ``root`` (the CLI's ``--data-root``) is searched first, then ``$DMLKIT_DATA``, then the Debian
    package folder (Fashion-MNIST), then ``~/.cache/dmlkit/<name>``. ``folder:``/``csv:`` paths are
    used as given.

    Raises:
        DatasetError: unknown name, missing or malformed data (the message says where it looked and
            how to get the data).
    """
    if name.startswith("folder:"):
        return readers.read_folder(name[len("folder:"):])
    if name.startswith("csv:"):
        return readers.read_csv(name[len("csv:"):])
    key = name.lower()
    if key not in _READERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return _READERS[key][0](root)
