"""What ``dmlkit datasets NAME --json`` prints: each split's class and image counts."""
from __future__ import annotations

import numpy as np

from dmlkit.data.base import DatasetRecords


def summarize(records: DatasetRecords) -> dict:
    """``{"name", "images", "classes", "image_size", "channels", "splits": {tag: {"images", "classes"}}, ...}``.

    Classes count known labels only (-1, unknown, is left out); ``class_disjoint`` says whether no
    class of the train split appears on the test side.
    """
    splits = {}
    for tag in sorted(set(records.splits.tolist()), key=["train", "test", "query", "gallery"].index):
        labels = records.labels[records.splits == tag]
        splits[tag] = {"images": len(labels), "classes": len(np.unique(labels[labels >= 0]))}
    train = set(np.unique(records.labels[records.splits == "train"]).tolist()) - {-1}
    test = set(np.unique(records.labels[records.splits != "train"]).tolist()) - {-1}
    known = records.labels[records.labels >= 0]
    out = {"name": records.name, "images": len(records), "classes": len(np.unique(known)),
           "image_size": int(records.image_size), "channels": int(records.channels),
           "recall_at": list(records.recall_at), "class_disjoint": not (train & test), "splits": splits}
    if records.labeled is not None:
        out["labeled"] = int(records.labeled.sum())
    if records.augmentations is not None:
        out["augmentations"] = sorted(records.augmentations)
    return out
