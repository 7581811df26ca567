"""Evaluation protocols (EVALUATION.md §6): MLRC aggregation.

MLRC (Musgrave, Belongie, Lim, ECCV 2020): four models, each trained with one of four class-disjoint
folds held out, embed the test split in 128-d.

* **separated**: evaluate each model's embeddings alone, then average each metric over the models;
* **concatenated**: L2-normalise each model's vectors, concatenate them (norm √n_models), renormalise
  to unit length (a common scale: rankings unchanged) and evaluate once.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dmlkit.evaluation.metrics import evaluate

MLRC_RECALL_AT = (1,)


def concatenate_normalised(per_fold_embeddings: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """L2-normalise each model's ``[N, d]`` vectors and concatenate: ``[N, n*d]`` of norm √n."""
    folds = [torch.as_tensor(e) for e in per_fold_embeddings]
    if len(folds) < 1:
        raise ValueError("need at least one embedding array")
    sizes = {f.shape[0] for f in folds}
    if len(sizes) != 1 or any(f.dim() != 2 for f in folds):
        raise ValueError(
            f"every model must embed the same test items as a 2-D array; got shapes {[tuple(f.shape) for f in folds]}"
        )
    return torch.cat([F.normalize(f.double() if f.dtype == torch.float64 else f.float(), dim=1) for f in folds], dim=1)


def mlrc_aggregate(
    per_fold_embeddings: Sequence[torch.Tensor | np.ndarray],
    labels: torch.Tensor | np.ndarray | Sequence[int],
    recall_at: Sequence[int] = MLRC_RECALL_AT,
    nmi: bool = False,
    **evaluate_options,
) -> dict[str, dict]:
    """MLRC "separated" and "concatenated" metrics of the models' test embeddings.

    Args:
        per_fold_embeddings: one ``[N, 128]`` array per model (4 in MLRC), rows aligned with ``labels``.
        labels: ``[N]`` test class ids.
        recall_at, nmi, evaluate_options: passed to :func:`evaluate` (MLRC reports P@1, RP, MAP@R).

    Returns:
        ``{"separated": mean over models of each metric, "concatenated": metrics of the normalised
        concatenation, "per_model": [each model's metrics]}``. Each model's vectors are L2-normalised
        for "separated" too, as in MLRC.
    """
    concatenated = concatenate_normalised(per_fold_embeddings)
    dims = [torch.as_tensor(e).shape[1] for e in per_fold_embeddings]
    bounds = np.cumsum([0] + dims)
    per_model = [
        evaluate(concatenated[:, a:b], labels, recall_at, nmi=nmi, **evaluate_options)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    separated = {key: float(np.mean([m[key] for m in per_model])) for key in per_model[0]}
    joined = evaluate(F.normalize(concatenated, dim=1), labels, recall_at, nmi=nmi, **evaluate_options)
    return {"separated": separated, "concatenated": joined, "per_model": per_model}


def mlrc_from_embeddings(
    embeddings: Sequence[torch.Tensor | np.ndarray],
    labels: torch.Tensor | np.ndarray | Sequence[int],
    expected_models: int | None = 4,
    **options,
) -> dict[str, dict]:
    """What ``dmlkit eval --protocol mlrc RUN1 RUN2 RUN3 RUN4`` calls with the runs' test embeddings.

    Checks there are ``expected_models`` arrays (``None`` = any number >= 2) over the same items, then
    returns :func:`mlrc_aggregate`.
    """
    if expected_models is not None and len(embeddings) != expected_models:
        raise ValueError(
            f"the MLRC protocol needs {expected_models} runs (one per held-out fold), got {len(embeddings)}; "
            "pass one run directory per fold"
        )
    if len(embeddings) < 2:
        raise ValueError("MLRC aggregation needs at least 2 models")
    return mlrc_aggregate(embeddings, labels, **options)
