"""Exact k-nearest-neighbour search in query chunks (EVALUATION.md §1).

Conventions shared by every metric in :mod:`dmlkit.evaluation`:

* **Distance.** ``"euclidean"``: :math:`\\sqrt{\\max(0, \\lVert a\\rVert^2+\\lVert b\\rVert^2-2a^\\top b)}`,
  computed in float32 (float64 inputs stay float64). ``"cosine"``: :math:`1-\\hat a^\\top\\hat b` on
  L2-normalised vectors (same ranking as Euclidean on normalised vectors).
* **Self-match.** When ``gallery is None`` the query set is the gallery, and ``exclude_self=True``
  removes each query's **own index** from its list; a duplicate at distance 0 stays.
* **Ties.** Lists are sorted by (distance, gallery index). The torch backend guarantees it exactly:
  it takes ``topk(k + 1)``, re-sorts those by (distance, index) and, for the rare rows whose k-th and
  (k+1)-th distances are equal (a tie straddling the cut), redoes the row with a full *stable* sort of
  its distances, whose columns are in index order. faiss gives no order among equal distances; the
  faiss backend re-sorts each returned list by (distance, index), so it agrees with torch whenever no
  tie straddles the k-th position — always on tie-free data.
* **Memory.** One block of ``rows × M`` distances at a time, with ``rows = min(chunk, 2**23 // M)``
  (≤ 32 MiB in float32); never the full N×M matrix.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("euclidean", "cosine")
BACKENDS = ("torch", "faiss")
MAX_BLOCK_ELEMENTS = 2**23


def as_embeddings(x: torch.Tensor | np.ndarray, name: str = "embeddings") -> torch.Tensor:
    """A finite 2-D float tensor (float64 kept, anything else float32); ValueError otherwise."""
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(t.shape)}; reshape to one row per item")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); evaluate at least one item of dimension >= 1")
    if t.dtype != torch.float64:
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise ValueError(
            f"{name} contains NaN or inf in {bad} row(s); the model diverged or the input is corrupt — "
            "fix the training (lower lr) or drop those rows before evaluating"
        )
    return t


def check_options(metric: str, backend: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def block_rows(chunk: int, num_gallery: int) -> int:
    """Query rows per distance block: ``min(chunk, 2**23 // num_gallery)``, at least 1."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return max(1, min(chunk, MAX_BLOCK_ELEMENTS // max(num_gallery, 1)))


def _sort_by_distance_then_index(d: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row of (d, i) by distance, ties by index: an index sort followed by a stable sort."""
    order = torch.argsort(i, dim=1)
    d, i = d.gather(1, order), i.gather(1, order)
    order = torch.sort(d, dim=1, stable=True).indices
    return d.gather(1, order), i.gather(1, order)


def distance_blocks(
    query: torch.Tensor,
    gallery: torch.Tensor | None = None,
    exclude_self: bool = True,
    metric: str = "euclidean",
    chunk: int = 4096,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, d)`` with ``d [b, M]`` the *ranking* distances of queries ``start..start+b``:
    squared Euclidean (expansion, clamped at 0) or ``1 - cos``; the self-match, when excluded, is +inf.

    The torch path of every search: ranking by ``d`` equals ranking by the true distance.
    """
    same = gallery is None
    g = query if same else gallery
    if metric == "cosine":
        query, g = F.normalize(query, dim=1), F.normalize(g, dim=1)
    g_sq = (g * g).sum(1) if metric == "euclidean" else None
    rows = block_rows(chunk, g.shape[0])
    for start in range(0, query.shape[0], rows):
        q = query[start : start + rows]
        if g_sq is not None:
            d = torch.addmm(g_sq.unsqueeze(0), q, g.T, alpha=-2.0).add_((q * q).sum(1, keepdim=True)).clamp_min_(0)
        else:
            d = torch.mm(q, g.T).neg_().add_(1.0).clamp_min_(0)
        if same and exclude_self:
            r = torch.arange(q.shape[0], device=q.device)
            d[r, r + start] = float("inf")
        yield start, d


def topk_block(d: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries of each row of ``d`` sorted by (value, column), exactly.

    ``topk(k + 1)`` (sorted by value); rows holding equal values are re-sorted by (value, column), and
    rows where a tie straddles the cut (k-th value == (k+1)-th value) are redone with a full stable
    sort of the row.
    """
    kk = min(k + 1, d.shape[1])
    vals, idx = torch.topk(d, kk, dim=1, largest=False, sorted=True)
    tied = torch.nonzero((vals[:, 1:] == vals[:, :-1]).any(dim=1)).flatten()
    if tied.numel():  # only rows with equal values need the (value, index) re-sort
        vals[tied], idx[tied] = _sort_by_distance_then_index(vals[tied], idx[tied])
    if kk > k:
        straddle = torch.nonzero(vals[:, k - 1] == vals[:, k]).flatten()
        if straddle.numel():
            full = torch.sort(d[straddle], dim=1, stable=True)
            vals[straddle, :k], idx[straddle, :k] = full.values[:, :k], full.indices[:, :k]
    return vals[:, :k], idx[:, :k]


def iter_knn(
    query: torch.Tensor,
    k: int,
    gallery: torch.Tensor | None = None,
    exclude_self: bool = True,
    metric: str = "euclidean",
    backend: str = "torch",
    chunk: int = 4096,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, distances [b, k], indices [b, k])`` block by block over the queries.

    Inputs must already be validated 2-D float tensors (see :func:`as_embeddings`); ``k`` must not
    exceed the gallery size (minus one when the self-match is excluded).
    """
    check_options(metric, backend)
    same = gallery is None
    g = query if same else gallery
    drop_self = same and exclude_self
    if backend == "torch":
        for start, d in distance_blocks(query, gallery, exclude_self, metric, chunk):
            vals, idx = topk_block(d, k)
            yield start, (vals.sqrt_() if metric == "euclidean" else vals), idx
        return
    if metric == "cosine":
        query, g = F.normalize(query, dim=1), F.normalize(g, dim=1)
    rows = block_rows(chunk, g.shape[0])
    from dmlkit.optional import import_faiss

    faiss = import_faiss()
    gn = g.detach().cpu().float().numpy()
    index = faiss.IndexFlatL2(gn.shape[1]) if metric == "euclidean" else faiss.IndexFlatIP(gn.shape[1])
    index.add(np.ascontiguousarray(gn))
    kk = min(k + int(drop_self), gn.shape[0])
    for start in range(0, query.shape[0], rows):
        qn = np.ascontiguousarray(query[start : start + rows].detach().cpu().float().numpy())
        dist, ind = index.search(qn, kk)
        d, i = torch.from_numpy(dist), torch.from_numpy(ind)
        d = d.clamp_min_(0) if metric == "euclidean" else d.neg_().add_(1.0).clamp_min_(0)
        if drop_self:
            own = i == torch.arange(start, start + i.shape[0]).unsqueeze(1)
            own[~own.any(dim=1), -1] = True  # self not found (k+1 ties): drop the last column instead
            d, i = d[~own].view(i.shape[0], -1), i[~own].view(i.shape[0], -1)
        d, i = _sort_by_distance_then_index(d, i)
        d, i = d[:, :k].to(query.device, query.dtype), i[:, :k].to(query.device)
        yield start, (d.sqrt_() if metric == "euclidean" else d), i


def knn_search(
    query: torch.Tensor | np.ndarray,
    k: int,
    gallery: torch.Tensor | np.ndarray | None = None,
    exclude_self: bool = True,
    metric: str = "euclidean",
    backend: str = "torch",
    chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest gallery items of every query, sorted by (distance, gallery index).

    Args:
        query: ``[Q, D]`` embeddings.
        k: neighbours per query; at most the gallery size (minus one when the self-match is removed).
        gallery: ``[M, D]`` reference embeddings; ``None`` means the queries are the gallery.
        exclude_self: with ``gallery=None``, remove each query's own index from its list (ties and
            duplicates stay). Has no effect with a separate gallery. ``False`` keeps the self-match
            (neighbour tables whose row ``i`` starts with ``i``; a duplicate of ``i`` at distance 0 with a
            lower index would come first).
        metric: ``"euclidean"`` (true distances, not squared) or ``"cosine"`` (``1 - cos``).
        backend: ``"torch"`` (on the query's device, exact index tie-break) or ``"faiss"`` (CPU).
        chunk: the most query rows per distance block (see the module docstring).

    Returns:
        ``distances`` ``[Q, k]`` (query dtype) and ``indices`` ``[Q, k]`` int64 into the gallery.
    """
    q = as_embeddings(query, "query")
    g = None if gallery is None else as_embeddings(gallery, "gallery").to(q.device, q.dtype)
    if g is not None and g.shape[1] != q.shape[1]:
        raise ValueError(f"query has dimension {q.shape[1]} but gallery has {g.shape[1]}; embed both with one model")
    available = (q.shape[0] - int(exclude_self)) if g is None else g.shape[0]
    if not 1 <= k <= available:
        raise ValueError(
            f"k={k} but only {available} gallery items can be returned per query; pass 1 <= k <= {available}"
        )
    out_d = torch.empty(q.shape[0], k, dtype=q.dtype, device=q.device)
    out_i = torch.empty(q.shape[0], k, dtype=torch.long, device=q.device)
    for start, d, i in iter_knn(q, k, g, exclude_self, metric, backend, chunk):
        out_d[start : start + d.shape[0]] = d
        out_i[start : start + i.shape[0]] = i
    return out_d, out_i


def neighbour_table(
    embeddings: torch.Tensor | np.ndarray,
    k: int,
    metric: str = "euclidean",
    backend: str = "torch",
    chunk: int = 4096,
) -> torch.Tensor:
    """``[N, k]`` int64 table whose row ``i`` is ``i`` followed by its ``k - 1`` nearest other items.

    Unlike ``knn_search(x, k, exclude_self=False)``, item ``i`` always comes first even when an exact
    duplicate with a lower index exists (the search runs with the self-match removed by index).
    """
    x = as_embeddings(embeddings)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k={k} must be in [1, N={x.shape[0]}] (the row holds the item itself)")
    own = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    if k == 1:
        return own
    return torch.cat([own, knn_search(x, k - 1, None, True, metric, backend, chunk)[1]], dim=1)


def refresh_knn(embeddings: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's ``RefreshContext.knn``: ``(distances [N, k], indices [N, k])``, row ``i`` = ``i`` first
    (distance 0), then its ``k - 1`` nearest other items by Euclidean distance."""
    x = as_embeddings(embeddings)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"asked for {k} neighbours but the split has only {x.shape[0]} items; lower num_neighbors")
    own = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    if k == 1:
        return torch.zeros(x.shape[0], 1, device=x.device), own
    distances, indices = knn_search(x, k - 1, None, True)
    zero = torch.zeros(x.shape[0], 1, dtype=distances.dtype, device=distances.device)
    return torch.cat([zero, distances], dim=1), torch.cat([own, indices], dim=1)


class GalleryIndex:
    """A gallery searched many times (``dmlkit serve``): validated, normalised and indexed once.

    ``GalleryIndex(g, metric, backend).search(q, k)`` returns what ``knn_search(q, k, gallery=g,
    metric=metric, backend=backend)`` returns, without re-validating, re-normalising or re-indexing the
    ``[M, D]`` gallery on every call (at M = 100,000 those passes cost more than the search itself).
    """

    def __init__(self, gallery: torch.Tensor | np.ndarray, metric: str = "euclidean", backend: str = "torch") -> None:
        check_options(metric, backend)
        g = as_embeddings(gallery, "gallery")
        self.gallery = F.normalize(g, dim=1) if metric == "cosine" else g
        self.metric, self.backend = metric, backend
        self._g_sq = (self.gallery * self.gallery).sum(1) if metric == "euclidean" else None
        self._faiss = None
        if backend == "faiss":
            from dmlkit.optional import import_faiss

            faiss = import_faiss()
            gn = np.ascontiguousarray(self.gallery.detach().cpu().float().numpy())
            self._faiss = faiss.IndexFlatL2(gn.shape[1]) if metric == "euclidean" else faiss.IndexFlatIP(gn.shape[1])
            self._faiss.add(gn)

    def __len__(self) -> int:
        return self.gallery.shape[0]

    def search(self, query: torch.Tensor | np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(distances [Q, k], indices [Q, k])`` sorted by (distance, gallery index), as :func:`knn_search`."""
        q = as_embeddings(query, "query").to(self.gallery.device, self.gallery.dtype)
        if q.shape[1] != self.gallery.shape[1]:
            raise ValueError(f"query has dimension {q.shape[1]} but gallery has {self.gallery.shape[1]}; "
                             "embed both with one model")
        if not 1 <= k <= len(self):
            raise ValueError(f"k={k} but the gallery has {len(self)} items; pass 1 <= k <= {len(self)}")
        if self.metric == "cosine":
            q = F.normalize(q, dim=1)
        if self._faiss is not None:
            dist, ind = self._faiss.search(np.ascontiguousarray(q.detach().cpu().float().numpy()), k)
            d, i = torch.from_numpy(dist), torch.from_numpy(ind)
            d = d.clamp_min_(0) if self.metric == "euclidean" else d.neg_().add_(1.0).clamp_min_(0)
            d, i = _sort_by_distance_then_index(d, i)
            d, i = d.to(q.device, q.dtype), i.to(q.device)
        else:
            if self._g_sq is not None:
                d = torch.addmm(self._g_sq.unsqueeze(0), q, self.gallery.T, alpha=-2.0)
                d = d.add_((q * q).sum(1, keepdim=True)).clamp_min_(0)
            else:
                d = torch.mm(q, self.gallery.T).neg_().add_(1.0).clamp_min_(0)
            d, i = topk_block(d, k)
        return (d.sqrt_() if self.metric == "euclidean" else d), i
