"""Ranked relevance of each query's nearest gallery items (EVALUATION.md §1-2): the "neighbours" part
of :func:`dmlkit.evaluation.evaluate`.

Every list is in (distance, gallery index) order with the self-match removed by index, as
:mod:`dmlkit.evaluation.knn` defines. What the metrics read of a list is its relevance sequence
``rel_1..rel_k`` and the rank of its first relevant item, so that is what this module produces, block
by block over the queries, without materialising indices where it can avoid them.
"""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from dmlkit.evaluation.knn import distance_blocks, iter_knn, topk_block

KEY_PATH_MIN_K = 64  # below this, topk with indices is as fast as the key path
_MIN_ROWS_PER_THREAD = 64


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


def _relevance_keys(d: np.ndarray, rel: np.ndarray, k: int) -> np.ndarray:
    """Rows of ``(bits(d) << 1) | rel`` (uint32), the ``k + 1`` smallest of each row sorted ascending.

    The bits of a float32 ``>= 0`` order like its value; the left shift drops the sign bit, so -0.0
    becomes +0.0 (distances here are clamped at 0, so no other value has it set).
    """
    keys = np.left_shift(d.view(np.uint32), 1)
    np.bitwise_or(keys, rel.view(np.uint8), out=keys)
    kk = min(k + 1, keys.shape[1])
    if kk < keys.shape[1]:
        keys.partition(kk - 1, axis=1)  # in place: np.partition would copy the [B, M] keys
        keys = keys[:, :kk]
    keys.sort(axis=1)
    return keys


def _exact_relevance(d: np.ndarray, rel: np.ndarray, k: int) -> np.ndarray:
    """Relevance of the ``k`` first columns by (distance, column), from unique uint64 keys
    ``(bits(d) << 32) | column``: exact under any ties. ``-> bool [B, k]``."""
    keys = (d.view(np.uint32) & np.uint32(0x7FFFFFFF)).astype(np.uint64)
    np.left_shift(keys, np.uint64(32), out=keys)
    np.bitwise_or(keys, np.arange(d.shape[1], dtype=np.uint64), out=keys)
    if k < keys.shape[1]:
        keys.partition(k - 1, axis=1)
        keys = keys[:, :k]
    keys.sort(axis=1)
    cols = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return np.take_along_axis(rel, cols, axis=1)


def _key_path_rows(d: np.ndarray, rel: np.ndarray, k: int) -> np.ndarray:
    keys = _relevance_keys(d, rel, k)
    relevant = (keys[:, :k] & 1).astype(bool)
    # equal distances, different relevance: sorted neighbours 2v, 2v + 1 (a step of 1 from an even key)
    mixed = ((np.diff(keys, axis=1) == 1) & ((keys[:, :-1] & 1) == 0)).any(axis=1)
    redo = np.flatnonzero(mixed)  # equal distances of different relevance: order them by index
    if redo.size:
        relevant[redo] = _exact_relevance(d[redo], rel[redo], k)
    return relevant


def ranked_relevance(d: torch.Tensor, is_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Relevance of each row's ``k`` nearest columns under the (distance, column) order: bool ``[B, k]``.

    Args:
        d: ``[B, M]`` ranking distances, ``>= 0`` (+inf for the removed self-match), as
            :func:`dmlkit.evaluation.knn.distance_blocks` yields them.
        is_relevant: bool ``[B, M]``, column ``j`` is relevant to row ``q``.

    Long lists (k >= 64, float32 on CPU, the R-Precision lists of large classes) skip the indices:
    ``bits(d) << 1 | relevant`` keys, partitioned and sorted by numpy, give the relevance sequence
    directly, several times faster than ``topk``. Equal distances of equal relevance may come in any
    order without changing it; rows where equal distances differ in relevance are redone with unique
    ``bits << 32 | column`` keys (exact). Row blocks run in ``torch.get_num_threads()`` threads
    (numpy releases the GIL in partition and sort).
    """
    if k < KEY_PATH_MIN_K or d.dtype != torch.float32 or d.device.type != "cpu":
        return is_relevant.gather(1, topk_block(d, k)[1])
    dn, rn = d.numpy(), is_relevant.numpy()
    parts = min(torch.get_num_threads(), max(1, d.shape[0] // _MIN_ROWS_PER_THREAD))
    if parts == 1:
        return torch.from_numpy(_key_path_rows(dn, rn, k))
    bounds = np.linspace(0, d.shape[0], parts + 1).astype(int)
    with ThreadPoolExecutor(parts) as pool:
        out = list(pool.map(lambda i: _key_path_rows(dn[bounds[i] : bounds[i + 1]], rn[bounds[i] : bounds[i + 1]], k),
                            range(parts)))
    return torch.from_numpy(np.concatenate(out))


def _first_true(relevant: torch.Tensor) -> torch.Tensor:
    """1-based position of each row's first True, 0 for rows without one: int64 ``[B]``."""
    if relevant.device.type != "cpu":
        return torch.where(relevant.any(dim=1), relevant.to(torch.int8).argmax(dim=1) + 1, 0)
    r = relevant.numpy()
    first = r.argmax(axis=1)  # numpy's bool argmax stops at the first True
    return torch.from_numpy(np.where(r[np.arange(r.shape[0]), first], first + 1, 0).astype(np.int64))


def neighbour_relevance(
    query: torch.Tensor,
    gallery: torch.Tensor | None,
    q_class: torch.Tensor,
    g_class: torch.Tensor,
    list_k: int,
    recall_k: int = 1,
    metric: str = "euclidean",
    backend: str = "torch",
    chunk: int = 4096,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(start, relevant [b, k], first_rank [b] or None)`` block by block over the queries.

    Args:
        query, gallery: validated ``[Q, D]`` / ``[M, D]`` embeddings; ``gallery=None`` compares the
            queries to themselves (self removed by index).
        q_class, g_class: class ids (``0..C-1``) of the queries and the gallery items.
        list_k: the ranked list length the metrics read (RP, MAP@R, P@K).
        recall_k: the largest K of Recall@K (used by the faiss back-end only).

    torch back-end: ``k = list_k``, and ``first_rank`` is the rank of the first relevant item, read
    off the full distance row when it lies beyond the list (:func:`first_relevant_rank`), so
    Recall@K needs no top-max(K) list. faiss back-end: ``k = max(list_k, recall_k)`` neighbours and
    ``first_rank=None`` (Recall@K then reads the list).
    """
    if backend != "torch":
        k = max(recall_k, list_k)
        for start, _, idx in iter_knn(query, k, gallery, True, metric, backend, chunk):
            yield start, g_class[idx] == q_class[start : start + idx.shape[0]].unsqueeze(1), None
        return
    order, first, count = class_members(g_class, int(torch.cat([q_class, g_class]).max()) + 1)
    width = torch.arange(max(int(count.max()), 1), device=order.device)
    for start, d in distance_blocks(query, gallery, True, metric, chunk):
        c = q_class[start : start + d.shape[0]].unsqueeze(1)
        relevant = ranked_relevance(d, g_class.unsqueeze(0) == c, list_k)
        rank = _first_true(relevant)  # first relevant inside the list: its position is its rank
        beyond = torch.nonzero(rank == 0).flatten()
        if beyond.numel():
            cb = c[beyond]
            valid = width < count[cb]
            members = order[(first[cb] + width).clamp_max(len(order) - 1)]
            rank[beyond] = first_relevant_rank(d[beyond], members, valid)
        yield start, relevant, rank
