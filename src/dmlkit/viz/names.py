"""What a picture or the serve page writes under an item: its class name and its similarity."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def class_name(label: int, class_names: Sequence[str] | None = None) -> str:
    """The dataset's name of class ``label`` (Fashion-MNIST's "Trouser", a folder name, a CSV label),
    or the id itself where the dataset has no names (or -1, unknown)."""
    label = int(label)
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def is_unit_norm(embeddings: torch.Tensor, tol: float = 1e-3) -> bool:
    """Every row has L2 norm 1 (within ``tol``): Euclidean ranking is then cosine ranking."""
    norms = torch.as_tensor(embeddings).float().norm(dim=1)
    return bool(((norms - 1).abs() <= tol).all())


def similarity_scores(distances: torch.Tensor, metric: str, unit_norm: bool) -> tuple[torch.Tensor, str]:
    """``(scores, name)`` shown under each neighbour, monotone in the ranking distance.

    cosine metric: ``1 - d`` (d = 1 - cos); Euclidean on unit vectors: ``cos = 1 - d^2 / 2``; otherwise
    the Euclidean distance itself (there is no similarity it ranks by).
    """
    d = torch.as_tensor(distances).double()
    if metric == "cosine":
        return 1.0 - d, "cosine similarity"
    if unit_norm:
        return 1.0 - d.square() / 2.0, "cosine similarity"
    return d, "euclidean distance"
