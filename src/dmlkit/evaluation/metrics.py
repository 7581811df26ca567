"""Recall@K, Precision@K, R-Precision, MAP@R and NMI from one chunked kNN search (EVALUATION.md §2-3).

For one query with ranked relevance ``rel_1..rel_k`` (self removed by index, ties by index) and
``R`` relevant gallery items, with ``P(i) = (1/i) Σ_{t<=i} rel_t``:

* Recall@K = 1[∃ i <= K: rel_i = 1]   (the DML hit rate, not IR recall)
* P@K      = (1/K) Σ_{i<=K} rel_i
* RP       = (1/R) Σ_{i<=R} rel_i
* MAP@R    = (1/R) Σ_{i<=R} P(i) rel_i  (MLRC), so MAP@R <= RP <= 1.

Means are over queries (``average="micro"``) or over classes of per-class means (``"class"``).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from dmlkit.evaluation.clustering import kmeans, nmi_score
from dmlkit.evaluation.knn import as_embeddings, check_options
from dmlkit.evaluation.ranking import first_relevant_rank, neighbour_relevance, ranked_relevance  # noqa: F401 (re-exported)

LONE_QUERY = ("exclude", "zero")
AVERAGES = ("micro", "class")


def _as_labels(labels: torch.Tensor | np.ndarray | Sequence[int], n: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with one label per embedding row ({n}), got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class ids, got dtype {t.dtype}")
    return t.long()


def _check_ks(ks: Sequence[int], name: str, available: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"{name} values must be >= 1, got {ks}")
    if ks and max(ks) > available:
        raise ValueError(
            f"{name}={ks} asks for K={max(ks)} but each query ranks only {available} gallery items; "
            f"drop the K values above {available} or evaluate a larger set"
        )
    return ks


def recall_at_k(relevant: torch.Tensor, recall_at: Sequence[int], first_rank: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
    """Recall@K = 1[∃ i <= K: rel_i = 1] per query: ``first_rank <= K`` when the rank of the first
    relevant item is given (any K), else read off ``relevant [B, k]`` (K <= k). ``-> float64 [B]`` each."""
    if first_rank is None:
        first_rank = torch.where(relevant.any(dim=1), relevant.to(torch.int8).argmax(dim=1) + 1, relevant.shape[1] + 1)
    return {f"recall@{k}": (first_rank <= k).to(torch.float64) for k in recall_at}


def precision_at_k(hits: torch.Tensor, precision_at: Sequence[int]) -> dict[str, torch.Tensor]:
    """P@K = hits[K] / K per query, from the running hit counts ``hits [B, k]`` (``hits[:, i-1] = Σ_{t<=i} rel_t``)."""
    return {f"precision@{k}": hits[:, k - 1].to(torch.float64) / k for k in precision_at}


def r_precision_and_map_at_r(relevant: torch.Tensor, num_relevant: torch.Tensor, hits: torch.Tensor | None = None
                             ) -> dict[str, torch.Tensor]:
    """RP = (1/R) Σ_{i<=R} rel_i and MAP@R = (1/R) Σ_{i<=R} P(i) rel_i per query (MLRC), R = ``num_relevant``.

    ``relevant [B, k]`` needs k >= max R; rows with R = 0 score 0. ``-> float64 [B]`` each.
    """
    if hits is None:
        hits = relevant.to(torch.int32).cumsum(dim=1)
    ranks = torch.arange(1, relevant.shape[1] + 1, device=relevant.device)
    counted = relevant & (ranks.unsqueeze(0) <= num_relevant.unsqueeze(1))  # rel_i for i <= R
    r = num_relevant.to(torch.float64).clamp_min(1)
    precision_at_i = hits.to(torch.float64) / ranks
    return {"r_precision": counted.sum(dim=1).to(torch.float64) / r,
            "map@r": torch.where(counted, precision_at_i, 0.0).sum(dim=1) / r}


def retrieval_scores(
    relevant: torch.Tensor,
    num_relevant: torch.Tensor,
    recall_at: Sequence[int],
    precision_at: Sequence[int],
    first_rank: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-query scores from ranked relevance.

    Args:
        relevant: bool ``[B, k]``, ``relevant[q, i]`` = rank ``i+1`` of query ``q`` is relevant;
            ``k`` must be at least ``max(precision_at, num_relevant)`` and, without ``first_rank``,
            ``max(recall_at)``.
        num_relevant: ``[B]`` R(q); rows with R = 0 score 0 on RP and MAP@R.
        first_rank: optional ``[B]`` rank of the first relevant item (:func:`first_relevant_rank`);
            Recall@K is then ``first_rank <= K`` for K beyond the list.

    Returns:
        float64 ``[B]`` tensors keyed ``recall@K``, ``precision@K``, ``r_precision``, ``map@r``.
    """
    hits = relevant.to(torch.int32).cumsum(dim=1)  # hits[:, i-1] = Σ_{t<=i} rel_t
    out = recall_at_k(relevant, recall_at, first_rank)
    out.update(precision_at_k(hits, precision_at))
    out.update(r_precision_and_map_at_r(relevant, num_relevant, hits))
    return out


def clustering_nmi(
    x: torch.Tensor, labels: torch.Tensor, iters: int = 20, n_init: int = 1, init: str = "auto", seed: int = 0,
    backend: str = "torch",
) -> float:
    """NMI between ``labels [N]`` and k-means on ``x [N, D]`` with one cluster per distinct label."""
    clusters = kmeans(x, int(torch.unique(labels).numel()), iters, n_init, init, seed, backend)
    return nmi_score(labels, clusters)


def _mean(values: torch.Tensor, labels: torch.Tensor, average: str) -> float:
    if values.numel() == 0:
        return math.nan
    if average == "micro":
        return float(values.mean())
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), dtype=torch.float64).index_add_(0, inverse, values)
    return float((sums / torch.bincount(inverse, minlength=len(classes))).mean())


def evaluate(
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    recall_at: Sequence[int] = (1, 2, 4, 8),
    metric: str = "euclidean",
    *,
    query_embeddings: torch.Tensor | np.ndarray | None = None,
    query_labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    precision_at: Sequence[int] = (1,),
    nmi: bool = True,
    lone_query: str = "exclude",
    average: str = "micro",
    backend: str = "torch",
    chunk: int = 4096,
    kmeans_iters: int = 20,
    kmeans_n_init: int = 1,
    kmeans_init: str = "auto",
    kmeans_backend: str = "torch",
    seed: int = 0,
) -> dict[str, float]:
    """Every retrieval metric from ONE chunked kNN search, plus NMI.

    Args:
        embeddings: ``[N, D]`` gallery (reference) embeddings. Without ``query_embeddings`` they are
            also the queries ("compared to self"): each query's own index is removed from its list.
        labels: ``[N]`` integer class ids of ``embeddings``.
        recall_at: the K of Recall@K (hit rate); every K must be <= the gallery size (N - 1 when
            compared to self), else ValueError.
        metric: ``"euclidean"`` or ``"cosine"``.
        query_embeddings, query_labels: a separate query set ``[Q, D]``, ``[Q]`` (In-shop: query vs
            gallery, nothing removed).
        precision_at: the K of P@K; ``precision@1`` is always reported.
        nmi: run k-means on the query embeddings with one cluster per distinct query label.
        lone_query: ``"exclude"`` drops queries with R(q) = 0 from every retrieval mean;
            ``"zero"`` counts them as 0. Either way ``num_lone_queries`` reports how many there are.
        average: ``"micro"`` (mean over queries) or ``"class"`` (mean of per-class means).
        backend, chunk: kNN back-end and query rows per block (:func:`dmlkit.evaluation.knn.knn_search`).
        kmeans_iters, kmeans_n_init, kmeans_init, kmeans_backend, seed: k-means settings for NMI.

    Returns:
        ``recall@K`` for each K, ``precision@K``, ``r_precision``, ``map@r``, ``nmi`` (when asked) and
        ``num_lone_queries``. Retrieval metrics are NaN (with a warning) when every query is lone.
        The ranked list has k = max(P@K values, largest R(q)) entries, so RP and MAP@R are exact.
        Recall@K: the torch back-end reads the rank of the first relevant item off each distance
        block (exact for every K, no top-max(K) list); the faiss back-end searches
        k = max(K values, largest R(q)) neighbours instead.
    """
    _check_evaluate_options(lone_query, average, metric, backend)
    query, q_labels, gallery, g_labels = _query_and_gallery(embeddings, labels, query_embeddings, query_labels)
    recall_at, precision_at = _list_lengths(query, gallery, recall_at, precision_at)
    per_query, num_relevant = _per_query_scores(query, q_labels, gallery, g_labels, recall_at, precision_at,
                                                metric, backend, chunk)
    lone = (num_relevant == 0).cpu()
    result = _retrieval_means(per_query, lone, q_labels, lone_query, average)
    if nmi:
        result["nmi"] = clustering_nmi(query, q_labels, kmeans_iters, kmeans_n_init, kmeans_init, seed, kmeans_backend)
    result["num_lone_queries"] = int(lone.sum())
    return result


def _check_evaluate_options(lone_query: str, average: str, metric: str, backend: str) -> None:
    if lone_query not in LONE_QUERY:
        raise ValueError(f"lone_query must be one of {LONE_QUERY}, got {lone_query!r}")
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    check_options(metric, backend)


def _retrieval_means(per_query: dict[str, torch.Tensor], lone: torch.Tensor, q_labels: torch.Tensor,
                     lone_query: str, average: str) -> dict[str, float]:
    """Each metric's mean over the kept queries (``lone [Q]`` bool: R(q) = 0; dropped under "exclude")."""
    keep = ~lone if lone_query == "exclude" else torch.ones_like(lone)
    if not bool(keep.any()):  # stacklevel 3: the warning names evaluate's caller
        warnings.warn("every query is lone (no other item of its class); retrieval metrics are NaN", stacklevel=3)
    kept_labels = q_labels.cpu()[keep]
    return {name: _mean(values[keep], kept_labels, average) for name, values in per_query.items()}


def _list_lengths(query: torch.Tensor, gallery: torch.Tensor | None, recall_at: Sequence[int],
                  precision_at: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validated Recall@K and P@K values (each K <= the gallery size, N - 1 when compared to self;
    P@1 always included)."""
    same = gallery is None
    available = (query if same else gallery).shape[0] - int(same)
    if available < 1:
        raise ValueError("a set compared to itself needs at least 2 items")
    recall_at = _check_ks(recall_at, "recall_at", available)
    return recall_at, tuple(sorted(set(_check_ks(precision_at, "precision_at", available)) | {1}))


def _per_query_scores(query: torch.Tensor, q_labels: torch.Tensor, gallery: torch.Tensor | None,
                      g_labels: torch.Tensor, recall_at: Sequence[int], precision_at: Sequence[int],
                      metric: str, backend: str, chunk: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each metric's ``[Q]`` per-query scores (float64, CPU) and each query's R(q) ``[Q]``.

    ``gallery`` None means the queries are compared to themselves (own index removed, R(q) one less).
    """
    same = gallery is None
    classes, inverse = torch.unique(torch.cat([q_labels, g_labels]), return_inverse=True)
    q_class, g_class = inverse[: len(q_labels)], inverse[len(q_labels) :]
    num_relevant = torch.bincount(g_class, minlength=len(classes))[q_class] - int(same)
    list_k = max(max(precision_at), int(num_relevant.max()))  # the list RP, MAP@R and P@K read
    per_query: dict[str, torch.Tensor] = {}
    for start, relevant, rank in neighbour_relevance(query, gallery, q_class, g_class, list_k,
                                                     max(recall_at, default=1), metric, backend, chunk):
        stop = start + relevant.shape[0]
        scores = retrieval_scores(relevant, num_relevant[start:stop], recall_at, precision_at, rank)
        for name, value in scores.items():
            per_query.setdefault(name, torch.empty(query.shape[0], dtype=torch.float64))[start:stop] = value.cpu()
    return per_query, num_relevant


def _query_and_gallery(embeddings, labels, query_embeddings, query_labels
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Validated ``(query, query labels, gallery or None when compared to self, gallery labels)``."""
    gallery = as_embeddings(embeddings, "embeddings")
    g_labels = _as_labels(labels, gallery.shape[0], "labels").to(gallery.device)
    if query_embeddings is None:
        if query_labels is not None:
            raise ValueError("query_labels given without query_embeddings; pass both or neither")
        return gallery, g_labels, None, g_labels
    if query_labels is None:
        raise ValueError("query_embeddings given without query_labels; pass both")
    query = as_embeddings(query_embeddings, "query_embeddings").to(gallery.device, gallery.dtype)
    q_labels = _as_labels(query_labels, query.shape[0], "query_labels").to(gallery.device)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query_embeddings have dimension {query.shape[1]} but embeddings have {gallery.shape[1]}")
    return query, q_labels, gallery, g_labels
