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
from dmlkit.evaluation.knn import as_embeddings, check_options, distance_blocks, iter_knn, topk_block

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


def class_members(g_class: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gallery indices grouped by class: ``(order, start, count)`` with class ``c``'s members
    ``order[start[c] : start[c] + count[c]]`` in ascending index order."""
    order = torch.argsort(g_class, stable=True)
    count = torch.bincount(g_class, minlength=num_classes)
    return order, torch.cumsum(count, 0) - count, count


def first_relevant_rank(d: torch.Tensor, members: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's first relevant column under the (distance, column) order.

    Args:
        d: ``[B, M]`` ranking distances (+inf marks the removed self-match).
        members: ``[B, m]`` gallery columns of each row's class; ``valid`` ``[B, m]`` marks real entries.

    Returns:
        int64 ``[B]``; ``M + 1`` for rows without a relevant item at finite distance. Recall@K is
        ``rank <= K`` for every K at once, with no top-K list: rank = #{d < d*} + 1, plus, in the
        rare rows where other columns tie with d*, those of them with a lower index.
    """
    member_d = torch.where(valid, d.gather(1, members), float("inf"))
    best = member_d.amin(dim=1, keepdim=True)
    first_col = torch.where(valid & (member_d == best), members, d.shape[1]).amin(dim=1, keepdim=True)
    n_lt = (d < best).to(torch.float32).sum(dim=1).long()
    n_le = (d <= best).to(torch.float32).sum(dim=1).long()
    rank = n_lt + 1
    tied = torch.nonzero(n_le - n_lt > 1).flatten()
    if tied.numel():
        cols = torch.arange(d.shape[1], device=d.device)
        ties_before = ((d[tied] == best[tied]) & (cols < first_col[tied])).sum(dim=1)
        rank[tied] += ties_before
    return torch.where(torch.isinf(best.squeeze(1)), d.shape[1] + 1, rank)


def ranked_relevance(d: torch.Tensor, is_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Relevance of each row's ``k`` nearest columns under the (distance, column) order: bool ``[B, k]``.

    Args:
        d: ``[B, M]`` ranking distances (>= 0, +inf for the removed self-match).
        is_relevant: bool ``[B, M]``, column ``j`` is relevant to row ``q``.

    Long lists (k >= 64, float32 on CPU, the R-Precision lists of large classes) skip the indices:
    the bits of a non-negative float32 order like its value, so ``bits << 1 | relevant`` sorted by
    numpy's vectorised partition + sort gives the relevance sequence directly, several times faster
    than ``topk``. Equal distances of equal relevance may come in any order without changing it;
    rows where equal distances differ in relevance (within the first k + 1) are redone by index
    with :func:`topk_block`.
    """
    if k < 64 or d.dtype != torch.float32 or d.device.type != "cpu" or not bool((d >= 0).all()):
        return is_relevant.gather(1, topk_block(d, k)[1])
    keys = np.left_shift((d + 0.0).numpy().view(np.uint32), 1)  # + 0.0 makes -0.0 +0.0; bit 31 is free
    np.bitwise_or(keys, is_relevant.numpy(), out=keys)
    kk = min(k + 1, keys.shape[1])
    if kk < keys.shape[1]:
        keys = np.partition(keys, kk - 1, axis=1)[:, :kk]
    keys = torch.from_numpy(np.sort(keys, axis=1).view(np.int32))  # < 2^32: the int32 view keeps equality
    rel, value = (keys & 1).bool(), keys >> 1
    mixed = ((value[:, 1:] == value[:, :-1]) & (rel[:, 1:] != rel[:, :-1])).any(dim=1)
    relevant = rel[:, :k].clone()
    redo = torch.nonzero(mixed).flatten()
    if redo.numel():
        relevant[redo] = is_relevant[redo].gather(1, topk_block(d[redo], k)[1])
    return relevant


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
    if first_rank is None:
        out = {f"recall@{k}": (hits[:, k - 1] > 0).to(torch.float64) for k in recall_at}
    else:
        out = {f"recall@{k}": (first_rank <= k).to(torch.float64) for k in recall_at}
    out.update({f"precision@{k}": hits[:, k - 1].to(torch.float64) / k for k in precision_at})
    ranks = torch.arange(1, relevant.shape[1] + 1, device=relevant.device)
    counted = relevant & (ranks.unsqueeze(0) <= num_relevant.unsqueeze(1))  # rel_i for i <= R
    r = num_relevant.to(torch.float64).clamp_min(1)
    out["r_precision"] = counted.sum(dim=1).to(torch.float64) / r
    precision_at_i = hits.to(torch.float64) / ranks
    out["map@r"] = torch.where(counted, precision_at_i, 0.0).sum(dim=1) / r
    return out


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
    if lone_query not in LONE_QUERY:
        raise ValueError(f"lone_query must be one of {LONE_QUERY}, got {lone_query!r}")
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    check_options(metric, backend)
    gallery = as_embeddings(embeddings, "embeddings")
    g_labels = _as_labels(labels, gallery.shape[0], "labels").to(gallery.device)
    same = query_embeddings is None
    if same:
        if query_labels is not None:
            raise ValueError("query_labels given without query_embeddings; pass both or neither")
        query, q_labels = gallery, g_labels
    else:
        if query_labels is None:
            raise ValueError("query_embeddings given without query_labels; pass both")
        query = as_embeddings(query_embeddings, "query_embeddings").to(gallery.device, gallery.dtype)
        q_labels = _as_labels(query_labels, query.shape[0], "query_labels").to(gallery.device)
        if query.shape[1] != gallery.shape[1]:
            raise ValueError(
                f"query_embeddings have dimension {query.shape[1]} but embeddings have {gallery.shape[1]}"
            )
    available = gallery.shape[0] - int(same)
    if available < 1:
        raise ValueError("a set compared to itself needs at least 2 items")
    recall_at = _check_ks(recall_at, "recall_at", available)
    precision_at = tuple(sorted(set(_check_ks(precision_at, "precision_at", available)) | {1}))

    classes, inverse = torch.unique(torch.cat([q_labels, g_labels]), return_inverse=True)
    q_class, g_class = inverse[: len(q_labels)], inverse[len(q_labels) :]
    num_relevant = torch.bincount(g_class, minlength=len(classes))[q_class] - int(same)
    per_query: dict[str, torch.Tensor] = {}

    def record(start: int, scores: dict[str, torch.Tensor]) -> None:
        for name, value in scores.items():
            stop = start + value.shape[0]
            per_query.setdefault(name, torch.empty(query.shape[0], dtype=torch.float64))[start:stop] = value.cpu()

    list_k = max(max(precision_at), int(num_relevant.max()))  # the list RP, MAP@R and P@K read
    if backend == "torch":  # Recall@K from the first relevant rank: no top-max(K) list needed
        order, first, count = class_members(g_class, len(classes))
        width = torch.arange(max(int(count.max()), 1), device=order.device)
        for start, d in distance_blocks(query, None if same else gallery, True, metric, chunk):
            stop = start + d.shape[0]
            c = q_class[start:stop].unsqueeze(1)
            valid = width < count[c]
            members = order[(first[c] + width).clamp_max(len(order) - 1)]  # [b, largest class]
            relevant = ranked_relevance(d, g_class.unsqueeze(0) == c, list_k)
            found = relevant.any(dim=1)  # first relevant inside the list: its position is its rank
            rank = torch.where(found, relevant.to(torch.int8).argmax(dim=1) + 1, 0)
            beyond = torch.nonzero(~found).flatten()
            if beyond.numel():
                rank[beyond] = first_relevant_rank(d[beyond], members[beyond], valid[beyond])
            record(start, retrieval_scores(relevant, num_relevant[start:stop], recall_at, precision_at, rank))
    else:
        k = max(max(recall_at, default=1), list_k)
        for start, _, idx in iter_knn(query, k, None if same else gallery, True, metric, backend, chunk):
            stop = start + idx.shape[0]
            relevant = g_class[idx] == q_class[start:stop].unsqueeze(1)
            record(start, retrieval_scores(relevant, num_relevant[start:stop], recall_at, precision_at))

    lone = (num_relevant == 0).cpu()
    keep = ~lone if lone_query == "exclude" else torch.ones_like(lone)
    if not bool(keep.any()):
        warnings.warn("every query is lone (no other item of its class); retrieval metrics are NaN", stacklevel=2)
    kept_labels = q_labels.cpu()[keep]
    result = {name: _mean(values[keep], kept_labels, average) for name, values in per_query.items()}
    if nmi:
        n_clusters = int(torch.unique(q_labels).numel())
        clusters = kmeans(query, n_clusters, kmeans_iters, kmeans_n_init, kmeans_init, seed, kmeans_backend)
        result["nmi"] = nmi_score(q_labels, clusters)
    result["num_lone_queries"] = int(lone.sum())
    return result
