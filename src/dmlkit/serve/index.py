"""Nearest neighbours over stored embeddings, with each query's own R@1 and AP, for the serve page.

One search at start-up scores every query of the split the way :func:`dmlkit.evaluation.evaluate`
does (self removed by index, ties by index, lone queries flagged): ``recall@1`` is 1 when the first
neighbour shares the query's class, and ``ap`` is the query's MAP@R term
``(1/R) sum_{i<=R} P(i) rel_i`` (MLRC; R = other items of its class), so their means over the
non-lone queries are the run's R@1 and MAP@R. Later searches (one item, or an uploaded image) go
through the project's kNN too, on a gallery indexed once (:class:`dmlkit.evaluation.knn.GalleryIndex`,
faiss when installed; the same lists as :func:`dmlkit.evaluation.knn.knn_search`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dmlkit.evaluation.knn import GalleryIndex, as_embeddings, iter_knn
from dmlkit.evaluation.metrics import retrieval_scores
from dmlkit.viz.names import class_name, is_unit_norm, similarity_scores

ORDERS = ("index", "worst")


def default_backend() -> str:
    """``"faiss"`` when it imports, else ``"torch"`` (both exact)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "torch"
    return "faiss"


class RetrievalIndex:
    """Queries ``[Q, D]`` searched against a gallery ``[M, D]`` (the queries themselves when None).

    Args:
        query, query_labels: embeddings and ground-truth class ids of the items one can click.
        gallery, gallery_labels: the searched set (In-shop); None = the queries, self excluded.
        class_names: names indexed by class id; None shows the ids.
        metric: the evaluator's metric (``"euclidean"``).
        backend: the per-click search, ``"torch"`` or ``"faiss"``; default: faiss when installed. The
            start-up scoring always uses the evaluator's torch search.
        score_queries: run the start-up search that scores every query (R@1, AP).
    """

    def __init__(
        self,
        query: torch.Tensor | np.ndarray,
        query_labels: np.ndarray | Sequence[int],
        gallery: torch.Tensor | np.ndarray | None = None,
        gallery_labels: np.ndarray | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        metric: str = "euclidean",
        backend: str | None = None,
        score_queries: bool = True,
    ) -> None:
        self.query = as_embeddings(query, "query")
        self.query_labels = np.asarray(query_labels, dtype=np.int64)
        self.same = gallery is None
        self.gallery = self.query if self.same else as_embeddings(gallery, "gallery")
        self.gallery_labels = self.query_labels if self.same else np.asarray(gallery_labels, dtype=np.int64)
        if len(self.query_labels) != len(self.query) or len(self.gallery_labels) != len(self.gallery):
            raise ValueError(f"embeddings and labels must align: {len(self.query)} queries / {len(self.query_labels)} "
                             f"labels, {len(self.gallery)} gallery items / {len(self.gallery_labels)} labels")
        self.class_names = list(class_names) if class_names is not None else None
        self.metric, self.backend = metric, backend or default_backend()
        self.unit_norm = is_unit_norm(self.query) and (self.same or is_unit_norm(self.gallery))
        self.searcher = GalleryIndex(self.gallery, metric, self.backend)  # indexed once, searched per click
        self.recall1 = np.full(len(self.query), np.nan)
        self.ap = np.full(len(self.query), np.nan)
        self.num_relevant = self._num_relevant()
        if score_queries:
            self._score_queries()

    def _num_relevant(self) -> np.ndarray:
        classes, counts = np.unique(self.gallery_labels, return_counts=True)
        lookup = dict(zip(classes.tolist(), counts.tolist()))
        return np.array([lookup.get(int(c), 0) for c in self.query_labels], dtype=np.int64) - int(self.same)

    def _score_queries(self) -> None:
        """R@1 and AP (MAP@R term) of every query from one chunked search of ``max(1, max R)`` neighbours."""
        available = len(self.gallery) - int(self.same)
        k = int(min(max(1, self.num_relevant.max()), available))
        if k < 1:
            return
        g = None if self.same else self.gallery
        num_relevant = torch.from_numpy(self.num_relevant)
        g_labels = torch.from_numpy(self.gallery_labels)
        q_labels = torch.from_numpy(self.query_labels)
        # the evaluator's torch search: its (distance, index) tie rule is exact, so these scores average to
        # metrics.json's recall@1 and map@r (faiss orders ties only within its list)
        for start, _, idx in iter_knn(self.query, k, g, True, self.metric, "torch"):
            stop = start + idx.shape[0]
            relevant = g_labels[idx.cpu()] == q_labels[start:stop].unsqueeze(1)
            scores = retrieval_scores(relevant, num_relevant[start:stop], (1,), (1,))
            self.recall1[start:stop] = scores["recall@1"].numpy()
            self.ap[start:stop] = scores["map@r"].numpy()
        lone = self.num_relevant <= 0
        self.recall1[lone] = np.nan
        self.ap[lone] = np.nan

    def means(self) -> dict[str, float]:
        """Mean R@1 and AP over the non-lone queries (= the evaluator's recall@1 and map@r)."""
        keep = ~np.isnan(self.ap)
        return {"recall@1": float(self.recall1[keep].mean()) if keep.any() else float("nan"),
                "map@r": float(self.ap[keep].mean()) if keep.any() else float("nan")}

    def search(self, embedding: torch.Tensor | np.ndarray, k: int, exclude: int | None = None) -> list[dict[str, Any]]:
        """The ``k`` nearest gallery items of one embedding ``[D]`` (``exclude``: a gallery index to skip,
        the query itself), each ``{"index", "label", "class_name", "score", "distance"}``."""
        q = torch.as_tensor(embedding).reshape(1, -1)
        k = max(1, min(int(k), len(self.gallery) - int(exclude is not None)))
        extra = int(exclude is not None)
        dist, idx = self.searcher.search(q, k + extra)
        dist, idx = dist[0], idx[0]
        if exclude is not None:
            keep = idx != exclude
            if bool(keep.all()):
                keep[-1] = False
            dist, idx = dist[keep], idx[keep]
        scores, _ = similarity_scores(dist, self.metric, self.unit_norm)
        return [{"index": int(j), "label": int(self.gallery_labels[j]),
                 "class_name": class_name(self.gallery_labels[j], self.class_names),
                 "score": float(s), "distance": float(d)} for j, s, d in zip(idx.tolist(), scores.tolist(), dist.tolist())]

    @property
    def score_name(self) -> str:
        return similarity_scores(torch.zeros(1), self.metric, self.unit_norm)[1]

    def query_item(self, i: int, k: int) -> dict[str, Any]:
        """Query ``i``: its class, R@1, AP and its ``k`` neighbours with ``same`` (class) flags."""
        if not 0 <= i < len(self.query):
            raise IndexError(f"item {i} is out of range; the split has {len(self.query)} items (0..{len(self.query) - 1})")
        label = int(self.query_labels[i])
        neighbours = self.search(self.query[i], k, exclude=i if self.same else None)
        for n in neighbours:
            n["same"] = n["label"] == label
        return {"query": self.item(i), "neighbours": neighbours, "score_name": self.score_name}

    def item(self, i: int) -> dict[str, Any]:
        r1, ap = self.recall1[i], self.ap[i]
        return {"index": int(i), "label": int(self.query_labels[i]),
                "class_name": class_name(self.query_labels[i], self.class_names),
                "recall@1": None if np.isnan(r1) else float(r1), "ap": None if np.isnan(ap) else float(ap),
                "num_relevant": int(self.num_relevant[i])}

    def items(self, page: int = 0, per_page: int = 60, label: int | None = None, order: str = "index") -> dict[str, Any]:
        """One page of the queries, filtered by class (``label``) and ordered by index or worst AP first
        (lone queries last; ties by R@1, then index)."""
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        chosen = np.arange(len(self.query)) if label is None else np.flatnonzero(self.query_labels == label)
        if order == "worst":
            ap = np.where(np.isnan(self.ap[chosen]), np.inf, self.ap[chosen])
            r1 = np.where(np.isnan(self.recall1[chosen]), np.inf, self.recall1[chosen])
            chosen = chosen[np.lexsort((chosen, r1, ap))]
        per_page = max(1, min(int(per_page), 500))
        pages = max(1, -(-len(chosen) // per_page))
        page = max(0, min(int(page), pages - 1))
        shown = chosen[page * per_page:(page + 1) * per_page]
        return {"total": len(chosen), "page": page, "pages": pages, "per_page": per_page,
                "items": [self.item(int(i)) for i in shown]}

    def classes(self) -> list[dict[str, Any]]:
        """Every class of the queries with its name and count."""
        labels, counts = np.unique(self.query_labels, return_counts=True)
        return [{"label": int(c), "class_name": class_name(c, self.class_names), "count": int(n)}
                for c, n in zip(labels, counts)]
