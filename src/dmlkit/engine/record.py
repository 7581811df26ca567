"""What config.yaml records: every resolved setting, enough to reproduce the run.

The settings (each method option with its default filled in), then ``resolved`` (what the defaults
turned into for this data: the backbone(s), the file its starting weights came from, the views) and
``versions`` (the packages that ran it). Reading a run back ignores the last two sections.
"""
from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from dmlkit.data.base import DMLDataset
from dmlkit.engine.config import RunConfig
from dmlkit.methods import Method

PACKAGES = ("dmlkit", "torch", "numpy", "scipy", "scikit-learn", "lightning", "pytorch-metric-learning", "faiss-cpu",
            "kornia", "pyyaml")


def package_versions() -> dict[str, str]:
    """``name -> version`` of Python and of each installed package in :data:`PACKAGES`."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import dmlkit

    versions["dmlkit"] = dmlkit.__version__
    return versions


def run_record(config: RunConfig, method: Method, train_set: DMLDataset) -> dict[str, Any]:
    """The content of a run's config.yaml."""
    from dmlkit.data.views import preset_for
    from dmlkit.engine.validate import method_options
    from dmlkit.models.backbones import Backbone

    record = config.to_dict()
    record["options"] = method_options(config.method, config.options)
    backbones = [m for m in method.modules() if isinstance(m, Backbone)]
    record["resolved"] = {
        "backbone": sorted({b.name for b in backbones}),
        "pretrained": sorted({b.weights or "random init" for b in backbones}),
        "views_preset": preset_for(train_set),
        "views": record["options"].get("views", 1 if backbones else None),
        "image_size": train_set.image_size, "channels": train_set.channels, "train_items": len(train_set),
    }
    record["versions"] = package_versions()
    return record
