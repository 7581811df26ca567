"""dmlkit: deep metric learning with few or no labels.

    >>> import dmlkit
    >>> metrics = dmlkit.evaluate(embeddings, labels)          # doctest: +SKIP
"""
from __future__ import annotations

__version__ = "0.1.0"


def evaluate(*args, **kwargs):  # noqa: D103 - documented in dmlkit.evaluation.evaluate
    from dmlkit.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


evaluate.__doc__ = "Recall@K, NMI, P@1, R-Precision and MAP@R from one kNN search; see dmlkit.evaluation.evaluate."

def train(*args, **kwargs):  # noqa: D103 - documented in dmlkit.engine.run.train
    from dmlkit.engine.run import train as _train

    return _train(*args, **kwargs)


train.__doc__ = "Train one method like `dmlkit train`; returns metrics.json's content. See dmlkit.engine.run.train."

__all__ = ["evaluate", "train", "__version__"]
