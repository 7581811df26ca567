"""k-means pseudo labels (SLADE stage 2, spec SLADE.md §5; reusable by DeepCluster-style baselines).

Given teacher embeddings ``F_u [N, D]`` of an unlabeled pool:

1. initial centroids: labeled-class prototypes ``π_c = normalize(mean_{i∈I_c} F_l,i)`` (then K > C adds
   K − C centroids by k-means++ seeding on ``F_u`` with the prototypes held as already chosen, and
   K < C keeps K prototypes picked by k-means++ among them), or plain k-means++ on ``F_u``;
2. Lloyd's iterations with Euclidean distance (optionally spherical: centroids re-normalised), stopping
   when the assignments stop changing; an empty cluster is re-seeded with the point farthest from its
   own centroid;
3. ``ŷ_j = argmin_c ||F_u,j − μ_c||``. A cluster seeded from prototype ``π_c`` keeps index c.

Seeding and Lloyd's iterations are dmlkit's one k-means (:mod:`dmlkit.kmeans`): distances in row blocks
([block, K], never [N, N]), torch or, with ``backend="faiss"``, a flat faiss index (same algorithm, same
labels); ``backend="auto"`` takes faiss when it is installed (the optional ``dmlkit[faiss]`` extra).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.kmeans import BACKENDS, kmeans_plus_plus, lloyd, nearest_centroid, resolve_backend

__all__ = ["BACKENDS", "class_prototypes", "kmeans_plus_plus", "kmeans_pseudo_labels", "nearest_centroid"]


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
    resolve_backend(backend)  # an unknown backend fails before the seeding
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
    labels, centroids, _ = lloyd(x, centroids, iters, spherical=spherical, refill_empty=True, backend=backend)
    return labels, centroids
