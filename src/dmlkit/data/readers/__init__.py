"""Dataset readers: one function per on-disk format, each returning a :class:`DatasetRecords`."""
from dmlkit.data.readers.arrays import read_cifar10, read_digits, read_idx, read_mnist_like
from dmlkit.data.readers.benchmarks import read_cars196, read_cub200, read_inshop, read_sop
from dmlkit.data.readers.custom import read_csv, read_folder
from dmlkit.data.readers.glyphs import read_glyphs

__all__ = [
    "read_cars196",
    "read_cifar10",
    "read_csv",
    "read_cub200",
    "read_digits",
    "read_folder",
    "read_glyphs",
    "read_idx",
    "read_inshop",
    "read_mnist_like",
    "read_sop",
]
