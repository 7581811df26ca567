"""dmlkit: deep metric learning with few or no labels.

    >>> import dmlkit
    >>> metrics = dmlkit.evaluate(embeddings, labels)          # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dmlkit.data.base import DatasetRecords

__version__ = "0.1.0"


def evaluate(*args, **kwargs):
    from dmlkit.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


evaluate.__doc__ = "Recall@K, NMI, P@1, R-Precision and MAP@R from one kNN search; see dmlkit.evaluation.evaluate."

def train(*args, **kwargs):
    from dmlkit.engine.run import train as _train

    return _train(*args, **kwargs)


train.__doc__ = "Train one method like `dmlkit train`; returns metrics.json's content. See dmlkit.engine.run.train."


def register_dataset(
    name: str, reader: Callable[[str | None], DatasetRecords], description: str, *, overwrite: bool = False
) -> None:
    """Make ``name`` a dataset name for :func:`train`, ``load_records`` and ``dmlkit datasets`` in this
    process; ``reader(root)`` returns a ``DatasetRecords``. See dmlkit.data.registry.register_dataset."""
    from dmlkit.data.registry import register_dataset as _register_dataset

    _register_dataset(name, reader, description, overwrite=overwrite)


def register_method(name: str, cls: type, *, overwrite: bool = False) -> None:
    """Make ``cls`` (a subclass of ``dmlkit.methods.Method``) a method name for :func:`train` and
    ``dmlkit methods`` in this process. See dmlkit.methods.register_method and docs/adding_a_method.md."""
    from dmlkit.methods import register_method as _register_method

    _register_method(name, cls, overwrite=overwrite)


__all__ = ["__version__", "evaluate", "register_dataset", "register_method", "train"]
