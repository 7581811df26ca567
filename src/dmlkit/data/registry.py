"""Dataset names as the CLI spells them, :func:`load_records`, and :func:`register_dataset` for your own."""
from __future__ import annotations

from collections.abc import Callable

from dmlkit.data import readers
from dmlkit.data.base import DatasetError, DatasetRecords

#: A dataset reader: the data root (``--data-root``, ``None`` when not given) -> the dataset's records.
DatasetReader = Callable[[str | None], DatasetRecords]

_READERS: dict[str, tuple[DatasetReader, str]] = {
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
    "glyphs": (lambda root: readers.read_glyphs("glyphs", root),
               ("characters as classes, font faces as instances, 64x64 grey: 100 train / 100 test classes, <= 60 "
                "each (built from the core font list on first use, or `dmlkit datasets build glyphs`)")),
    "glyphs-large": (lambda root: readers.read_glyphs("glyphs-large", root),
                     ("every glyph class with >= 20 font faces, half train / half test: 2,925 classes (built from "
                      "the large font list on first use, or `dmlkit datasets build glyphs-large`)")),
}
_PREFIXED = {
    "folder:PATH": "an image folder: PATH/<class>/* (first half of the classes train) or PATH/{train,test}/<class>/*",
    "csv:PATH": "a CSV with columns path,label,split[,labeled]; paths relative to the CSV's folder",
}
_BUILTIN = frozenset(_READERS)  # the names dmlkit ships; registered names are the other keys of _READERS
_PREFIXES = tuple(key.split(":", 1)[0] + ":" for key in _PREFIXED)  # "folder:", "csv:"


def register_dataset(name: str, reader: DatasetReader, description: str, *, overwrite: bool = False) -> None:
    """Make ``name`` a dataset name like the built-in ones, for the rest of this process.

    After registration, ``name`` works wherever a built-in name does: :func:`load_records`,
    ``dmlkit.train(method, name, ...)`` (and ``RunConfig.dataset``), :func:`list_datasets` and the
    ``dmlkit datasets`` listing. Names are case-insensitive, like the built-in ones, and listed in lower case.

    Registration lives in this Python process only: a separate ``dmlkit`` command (``dmlkit eval RUN``
    on such a run, say) does not know the name unless the same code registers it there first.

    Example::

        def read_shop(root):  # root: --data-root / RunConfig.data_root, or None
            images = ...  # uint8 [N, C, H, W], or N image paths
            return DatasetRecords("my-shop", images, labels, splits, image_size=64, channels=3)

        dmlkit.register_dataset("my-shop", read_shop, "my shop's products, 20 classes")
        dmlkit.train("supervised", "my-shop", "runs/shop", epochs=5)

    Args:
        name: the dataset name: one word without white space, not starting with a reserved prefix
            (``folder:``, ``csv:``).
        reader: called as ``reader(root)`` on every load, with the data root or ``None``; returns a
            :class:`~dmlkit.data.base.DatasetRecords`. Raise :class:`~dmlkit.data.base.DatasetError`
            for missing or malformed data (the CLI turns it into one error line and exit code 2).
        description: one line for :func:`list_datasets` / ``dmlkit datasets``.
        overwrite: replace a dataset already registered under ``name``, or a built-in one.

    Raises:
        TypeError: ``name`` or ``description`` is not a string, or ``reader`` is not callable.
        ValueError: an empty name or description, white space in the name, a reserved prefix, or a
            name that is taken (built-in or registered) while ``overwrite`` is False.
    """
    if not isinstance(name, str):
        raise TypeError(f"register_dataset: the name must be a string, got {type(name).__name__}")
    if not name:
        raise ValueError("register_dataset: the dataset name is empty; give a name such as 'my-shop'")
    if any(ch.isspace() for ch in name):
        raise ValueError(f"register_dataset: dataset name {name!r} contains white space; use one word such as "
                         f"{'-'.join(name.split()) or 'my-shop'!r}")
    key = name.lower()
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            raise ValueError(f"register_dataset: dataset name {name!r} starts with {prefix!r}, which is reserved for "
                             f"{prefix}PATH datasets; choose a name that does not start with {prefix!r}")
    if not callable(reader):
        raise TypeError(f"register_dataset: the reader for {name!r} must be callable as reader(root) -> "
                        f"DatasetRecords, got {type(reader).__name__}")
    if not isinstance(description, str):
        raise TypeError(f"register_dataset: the description of {name!r} must be a string, got "
                        f"{type(description).__name__}")
    if not description.strip():
        raise ValueError(f"register_dataset: the description of {name!r} is empty; give one line for `dmlkit datasets`")
    if key in _READERS and not overwrite:
        kind = "a built-in dataset" if key in _BUILTIN else "already registered"
        raise ValueError(f"register_dataset: dataset name {name!r} is {kind} ({_READERS[key][1]}); choose another "
                         f"name, or pass overwrite=True to replace it")
    _READERS[key] = (reader, description)


def list_datasets() -> dict[str, str]:
    """Every dataset name :func:`load_records` accepts, with a one-line description (built-in names,
    then the ones :func:`register_dataset` added, then the ``folder:``/``csv:`` forms)."""
    return {**{name: desc for name, (_, desc) in _READERS.items()}, **_PREFIXED}


def load_records(name: str, root: str | None = None) -> DatasetRecords:
    """Read a dataset by name (``fashion-mnist``, ``mnist``, ``cifar10``, ``digits``, ``cub200``,
    ``cars196``, ``sop``, ``inshop``, ``folder:PATH``, ``csv:PATH``, or a name added with
    :func:`register_dataset`).

    ``root`` (the CLI's ``--data-root``) is searched first, then ``$DMLKIT_DATA``, then the Debian
    package folder (Fashion-MNIST), then ``~/.cache/dmlkit/<name>``. ``folder:``/``csv:`` paths are
    used as given.

    Raises:
        DatasetError: unknown name, missing or malformed data (the message says where it looked and
            how to get the data); a registered reader that returns something other than
            :class:`DatasetRecords`.
    """
    if name.startswith("folder:"):
        return readers.read_folder(name[len("folder:"):])
    if name.startswith("csv:"):
        return readers.read_csv(name[len("csv:"):])
    key = name.lower()
    if key not in _READERS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    records = _READERS[key][0](root)
    if not isinstance(records, DatasetRecords):
        raise DatasetError(f"the reader of dataset {name!r} returned {type(records).__name__}, not DatasetRecords; "
                           "it must return dmlkit.data.DatasetRecords(name, images, labels, splits, ...)")
    return records
