"""The one dataset contract every reader, split and sampler in dmlkit speaks.

A reader returns a :class:`DatasetRecords` (every image of a dataset with its class and split
tag). Protocols (:mod:`dmlkit.data.splits`) turn records into :class:`DMLDataset` objects whose
items are dicts ``{"image": FloatTensor[C,H,W] in [0,1], "label": int (-1 = unlabeled), "index": int}``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset


class DatasetError(ValueError):
    """Bad or missing data. The message names the problem and the fix; the CLI exits with code 2."""


@dataclass
class DatasetRecords:
    """Every image of one dataset, before any protocol is applied.

    Attributes:
        name: dataset name as the CLI spells it (``fashion-mnist``, ``cub200`` ...).
        images: either a uint8 array ``[N, C, H, W]`` (in-memory sets) or a sequence of N file paths.
        labels: int64 ``[N]`` class ids, 0-based and contiguous over the whole dataset.
        splits: ``[N]`` array of strings, each one of ``train``, ``test``, ``query``, ``gallery``.
            ``query``/``gallery`` both belong to the test side (In-shop).
        class_names: optional names, indexed by class id.
        recall_at: the Recall@K list the field reports for this dataset.
        image_size: the side of the square network input the presets use.
        channels: 1 for grey, 3 for colour.
        labeled: optional bool ``[N]``: which training labels a semi-supervised method may see (the
            CSV contract's ``labeled`` column). None = every label is visible. A label of -1 marks an
            image whose class is unknown (only allowed for unlabeled training images).
        augmentations: the augmentations that keep an image's class (names in
            :data:`dmlkit.data.views.AUGMENTATIONS`: ``crop``, ``affine``, ``hflip``, ``colour``); every
            method's views drop the others. None = all of them (glyphs leave out ``hflip``: b/d, p/q).
    """

    name: str
    images: np.ndarray | Sequence[str]
    labels: np.ndarray
    splits: np.ndarray
    class_names: list[str] | None = None
    recall_at: tuple[int, ...] = (1, 2, 4, 8)
    image_size: int = 28
    channels: int = 1
    labeled: np.ndarray | None = None
    augmentations: frozenset[str] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.splits = np.asarray(self.splits)
        if self.labeled is not None:
            self.labeled = np.asarray(self.labeled, dtype=bool)
            if len(self.labeled) != len(self.labels):
                raise DatasetError(f"{self.name}: {len(self.labeled)} 'labeled' flags for {len(self.labels)} images")
        if len(self.images) != len(self.labels) or len(self.labels) != len(self.splits):
            raise DatasetError(
                f"{self.name}: {len(self.images)} images, {len(self.labels)} labels and "
                f"{len(self.splits)} split tags; the reader must give one of each per image"
            )

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray)

    def __len__(self) -> int:
        return len(self.labels)


class DMLDataset(Dataset):
    """A split of a dataset: items ``{"image", "label", "index"}``.

    ``labels`` holds what a method may read (``-1`` for unlabeled items); ``true_labels`` holds
    the ground truth for evaluation and quality reports only — training code never reads it.
    ``index`` is the position in this split (what samplers and neighbour tables speak).

    Args:
        images: uint8 ``[N, C, H, W]`` array, or N file paths.
        labels: int64 ``[N]`` labels visible to the method (-1 = unlabeled).
        true_labels: int64 ``[N]`` ground-truth class ids.
        loader: for file datasets, a function ``path -> uint8 [C, H, W]`` array at the preset size.
        name: a readable name, e.g. ``fashion-mnist/train``.
        class_names: names indexed by class id (the characters for glyphs); what pictures show.
        augmentations: the augmentations that keep the class (:attr:`DatasetRecords.augmentations`).
    """

    def __init__(
        self,
        images: np.ndarray | Sequence[str],
        labels: np.ndarray,
        true_labels: np.ndarray | None = None,
        loader: Callable[[str], np.ndarray] | None = None,
        name: str = "",
        recall_at: tuple[int, ...] = (1, 2, 4, 8),
        channels: int = 1,
        image_size: int = 28,
        class_names: list[str] | None = None,
        augmentations: frozenset[str] | None = None,
    ) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.true_labels = np.asarray(true_labels if true_labels is not None else labels, dtype=np.int64)
        self.loader = loader
        self.name = name
        self.recall_at = tuple(recall_at)
        self.channels = channels
        self.image_size = image_size
        self.class_names = class_names
        self.augmentations = augmentations
        if not isinstance(images, np.ndarray) and loader is None:
            raise DatasetError(f"{name}: a file-backed dataset needs an image loader")

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as float ``[C, H, W]`` in [0, 1]."""
        if isinstance(self.images, np.ndarray):
            array = self.images[i]
        else:
            array = self.loader(self.images[i])  # type: ignore[misc]
        return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image(i), "label": int(self.labels[i]), "index": int(i)}

    @property
    def labeled_mask(self) -> np.ndarray:
        return self.labels >= 0

    def subset(self, indices: np.ndarray, name: str | None = None) -> DMLDataset:
        """A new dataset holding ``indices`` of this one (re-indexed from 0)."""
        indices = np.asarray(indices, dtype=np.int64)
        images = self.images[indices] if isinstance(self.images, np.ndarray) else [self.images[i] for i in indices]
        return DMLDataset(
            images, self.labels[indices], self.true_labels[indices], self.loader,
            name or self.name, self.recall_at, self.channels, self.image_size, self.class_names, self.augmentations,
        )

    def with_labels(self, labels: np.ndarray) -> DMLDataset:
        """Same images, different visible labels (e.g. all -1 for label-free methods)."""
        return DMLDataset(
            self.images, labels, self.true_labels, self.loader, self.name, self.recall_at,
            self.channels, self.image_size, self.class_names, self.augmentations,
        )


@dataclass
class SplitData:
    """What a protocol hands the engine: a training split and the evaluation sets.

    For Q = G evaluation ``query`` is the test split and ``gallery`` is None; In-shop sets both.
    ``val`` is an optional held-out split (SSDML's 15 % per class, MLRC's fold).
    """

    train: DMLDataset
    query: DMLDataset
    gallery: DMLDataset | None = None
    val: DMLDataset | None = None
    info: dict = field(default_factory=dict)
