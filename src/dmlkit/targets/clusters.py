"""k-means pseudo labels (SLADE stage 2, spec SLADE.md §5; reusable by DeepCluster-style baselines).

Given teacher embeddings ``F_u [N, D]`` of an unlabeled pool:

1. initial centroids: labeled-class prototypes ``π_c = normalize(mean_{i∈I_c} F_l,i)`` (then K > C adds
   K − C centroids by k-means++ seeding on ``F_u`` with the prototypes held as already chosen, and
   K < C keeps K prototypes picked by k-means++ among them), or plain k-means++ on ``F_u``;
2. Lloyd's iterations with Euclidean distance (optionally spherical: centroids re-normalised), stopping
   when the assignments stop changing; an empty cluster is re-seeded with the point farthest from its
   own centroid;
3. ``ŷ_j = argmin_c ||F_u,j − μ_c||``. A cluster seeded from prototype ``π_c`` keeps index c.

Distances are computed in row blocks ([block, K], never [N, N]); the nearest-centroid search runs in
torch or, with ``backend="faiss"``, through a flat faiss index (same algorithm, same labels);
``backend="auto"`` takes faiss when it is installed (the optional ``dmlkit[faiss]`` extra), torch otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "torch", "faiss")
_BLOCK = 65536


def class_prototypes(embeddings: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """``π_c = normalize(mean of the rows of class c)``: ``[N, D], [N] (0..C-1, -1 ignored) -> [C, D]``.

    Raises:
        ValueError: a class in ``0..num_classes-1`` has no item.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    keep = labels >= 0
    x, y = embeddings[keep].float(), labels[keep]
    c = int(num_classes) if num_classes is not None else int(y.max()) + 1 if len(y) else 0
    counts = torch.bincount(y, minlength=c).float()
    if c == 0 or (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist() if c else []
        raise ValueError(
            f"class_prototypes: class(es) {missing or 'all'} have no labeled item; "
            "pass labels 0..C-1 with at least one item each"
        )
    sums = torch.zeros(c, x.shape[1]).index_add_(0, y, x)
    return F.normalize(sums / counts[:, None], dim=1)


def nearest_centroid(x: Tensor, centroids: Tensor, backend: str = "torch") -> tuple[Tensor, Tensor]:
    """Squared Euclidean distance to, and index of, the nearest centroid: ``[N, D], [K, D] -> [N], [N]``.
    Ties go to the smaller index."""
    from dmlkit.optional import has_faiss

    if backend == "auto":
        backend = "faiss" if has_faiss() else "torch"
    if backend == "faiss":
        import numpy as np

        from dmlkit.optional import import_faiss

        faiss = import_faiss()
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(np.ascontiguousarray(centroids.numpy(), dtype=np.float32))
        dist, idx = index.search(np.ascontiguousarray(x.numpy(), dtype=np.float32), 1)
        return torch.from_numpy(dist[:, 0]).clamp_min(0), torch.from_numpy(idx[:, 0]).long()
    if backend != "torch":
        raise ValueError(f"unknown k-means backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    dists, labels = [], []
    c_sq = (centroids * centroids).sum(1)
    for block in x.split(_BLOCK):
        d = ((block * block).sum(1, keepdim=True) - 2 * block @ centroids.T + c_sq).clamp_min(0)  # [b, K]
        m, i = d.min(dim=1)
        dists.append(m)
        labels.append(i)
    return torch.cat(dists), torch.cat(labels)


def kmeans_plus_plus(
    x: Tensor, n_new: int, generator: torch.Generator, chosen: Tensor | None = None
) -> Tensor:
    """k-means++ seeding: ``n_new`` rows of ``x [N, D]`` drawn with probability ∝ D(x)², D the distance
    to the nearest centre already chosen (``chosen [C, D]``, or the first centre uniform). ``-> [n_new, D]``."""
    if n_new > len(x):
        raise ValueError(
            f"k-means++ needs {n_new} new centres but there are only {len(x)} points; lower n_clusters"
        )
    out = []
    if chosen is None or len(chosen) == 0:
        first = int(torch.randint(len(x), (1,), generator=generator))
        out.append(x[first])
        min_d = ((x - x[first]) ** 2).sum(1)
    else:
        min_d = nearest_centroid(x, chosen)[0]
    while len(out) < n_new:
        weights = min_d.double()
        if weights.sum() <= 0:  # every point sits on a centre: draw uniformly
            weights = torch.ones_like(weights)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        out.append(x[pick])
        min_d = torch.minimum(min_d, ((x - x[pick]) ** 2).sum(1))
    return torch.stack(out) if out else x.new_zeros(0, x.shape[1])


def _fill_empty(x: Tensor, labels: Tensor, dist: Tensor, centroids: Tensor) -> None:
    """Re-seed every empty cluster, in place, with the points farthest from their own centroid."""
    counts = torch.bincount(labels, minlength=len(centroids))
    empty = torch.nonzero(counts == 0).flatten()
    if len(empty) == 0:
        return
    far = torch.argsort(dist, descending=True, stable=True)[: len(empty)]
    centroids[empty] = x[far]
    labels[far] = empty
    dist[far] = 0.0


def kmeans_pseudo_labels(
    embeddings: Tensor,
    n_clusters: int,
    init: str | Tensor = "k-means++",
    seed: int = 0,
    iters: int = 25,
    spherical: bool = False,
    backend: str = "torch",
) -> tuple[Tensor, Tensor]:
    """Pseudo labels of ``embeddings [N, D]`` by k-means: ``-> (labels long [N], centroids [K, D])``.

    Args:
        embeddings: the points to cluster (teacher embeddings of the unlabeled pool).
        n_clusters: K.
        init: ``"k-means++"``, or a prototype tensor ``[C, D]`` (e.g. :func:`class_prototypes`):
            K = C uses them as they are, K > C adds K − C k-means++ centres, K < C keeps K of them
            chosen by k-means++ (cluster ids then follow the picked prototypes' order).
        seed: seeds k-means++ (identical labels for identical inputs and seed).
        iters: Lloyd iterations at most (0: assign to the initial centroids).
        spherical: re-normalise the centroids after each update.
        backend: ``"torch"``, ``"faiss"`` or ``"auto"`` (faiss when installed) nearest-centroid search.

    Every cluster ends with at least one point when N >= K.
    """
    x = torch.as_tensor(embeddings).detach().float().cpu()
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(
            f"kmeans_pseudo_labels expects a non-empty [N, D] tensor, got shape {tuple(x.shape)}"
        )
    k = int(n_clusters)
    if not 1 <= k <= len(x):
        raise ValueError(f"n_clusters must be in 1..{len(x)} (the number of points), got {n_clusters}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(init, str):
        if init not in ("k-means++", "kmeans++"):
            raise ValueError(f"init must be 'k-means++' or a prototype tensor [C, D], got {init!r}")
        centroids = kmeans_plus_plus(x, k, gen)
    else:
        protos = torch.as_tensor(init).detach().float().cpu()
        if protos.ndim != 2 or protos.shape[1] != x.shape[1]:
            raise ValueError(f"prototypes must be [C, {x.shape[1]}], got shape {tuple(protos.shape)}")
        if k >= len(protos):
            centroids = torch.cat([protos, kmeans_plus_plus(x, k - len(protos), gen, chosen=protos)])
        else:
            centroids = kmeans_plus_plus(protos, k, gen)
    centroids = centroids.clone()
    dist, labels = nearest_centroid(x, centroids, backend)
    _fill_empty(x, labels, dist, centroids)
    for _ in range(iters):
        counts = torch.bincount(labels, minlength=k).float()
        centroids = torch.zeros_like(centroids).index_add_(0, labels, x) / counts[:, None]
        if spherical:
            centroids = F.normalize(centroids, dim=1)
        dist, new = nearest_centroid(x, centroids, backend)
        _fill_empty(x, new, dist, centroids)
        changed = bool((new != labels).any())
        labels = new
        if not changed:
            break
    return labels, centroids
