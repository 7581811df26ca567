"""Data: readers, splits, samplers, views.

- :func:`load_records` / :func:`list_datasets`: read a dataset by name (:mod:`dmlkit.data.registry`);
  :func:`register_dataset` adds a name of your own.
- :func:`make_split` and friends: protocols (:mod:`dmlkit.data.splits`).
- :mod:`dmlkit.data.samplers`: batch samplers; :mod:`dmlkit.data.views`: kornia augmentation
  (imported on demand: ``from dmlkit.data.views import Views``).
"""
from dmlkit.data.base import DatasetError, DatasetRecords, DMLDataset, SplitData
from dmlkit.data.images import ImageLoader, stored_size
from dmlkit.data.registry import list_datasets, load_records, register_dataset
from dmlkit.data.splits import make_split, mlrc_folds, stratified_indices, stratified_subset

__all__ = [
    "DMLDataset",
    "DatasetError",
    "DatasetRecords",
    "ImageLoader",
    "SplitData",
    "list_datasets",
    "load_records",
    "make_split",
    "mlrc_folds",
    "register_dataset",
    "stored_size",
    "stratified_indices",
    "stratified_subset",
]
