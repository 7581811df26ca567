"""Evaluation protocols (EVALUATION.md §6): zero-shot test-split evaluation and MLRC aggregation.

MLRC (Musgrave, Belongie, Lim, ECCV 2020): four models, each trained with one of four class-disjoint
folds held out, embed the test split in 128-d.

* **separated**: evaluate each model's embeddings alone, then average each metric over the models;
* **concatenated**: L2-normalise each model's vectors, concatenate them (norm √n_models), renormalise
  to unit length (a common scale: rankings unchanged) and evaluate once.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dmlkit.evaluation.embedding import embed_dataset
from dmlkit.evaluation.metrics import evaluate

MLRC_RECALL_AT = (1,)


def embed_with_labels(
    embed_fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed every item of ``dataset`` in index order: ``(embeddings [N, D] float32 CPU, labels [N] int64)``.

    The labels are a ``DMLDataset``'s ``true_labels`` when present (evaluation reads the ground truth,
    never the masked training labels).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    embeddings = embed_dataset(embed_fn, dataset, device, batch_size)
    true = getattr(dataset, "true_labels", None)
    labels = torch.as_tensor(true) if true is not None else torch.tensor([dataset[i]["label"] for i in range(len(dataset))])
    return embeddings, labels.long()


def zero_shot_evaluate(
    embed_fn: Callable[[torch.Tensor], torch.Tensor],
    test: Dataset,
    query: Dataset | None = None,
    recall_at: Sequence[int] | None = None,
    normalize: bool = False,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    **evaluate_options,
) -> dict[str, float]:
    """Embed the class-disjoint test split and evaluate it (Q = G, self removed by index).

    With ``query`` given (In-shop), ``test`` is the gallery and ``query`` the query set. ``recall_at``
    defaults to the split's own ``recall_at`` (e.g. 1/10/100/1000 for SOP). ``normalize`` L2-normalises
    the embeddings first (DRML, PLM, MLRC); other options go to :func:`evaluate`.
    """
    gallery, g_labels = embed_with_labels(embed_fn, test, batch_size, device)
    recall_at = tuple(recall_at if recall_at is not None else getattr(test, "recall_at", (1, 2, 4, 8)))
    if normalize:
        gallery = F.normalize(gallery, dim=1)
    if query is None:
        return evaluate(gallery, g_labels, recall_at, **evaluate_options)
    q, q_labels = embed_with_labels(embed_fn, query, batch_size, device)
    if normalize:
        q = F.normalize(q, dim=1)
    return evaluate(gallery, g_labels, recall_at, query_embeddings=q, query_labels=q_labels, **evaluate_options)


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


def mean_confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t ``level`` interval over repeated runs (MLRC's "± 95% CI")."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()) if v.size else math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)
