"""The one k-means of dmlkit: NMI in evaluation, DeepCluster's and SLADE's pseudo labels, quality baselines.

* :func:`kmeans_plus_plus` — D² seeding (Arthur & Vassilvitskii 2007);
* :func:`lloyd` — Lloyd's iterations from given centroids (assign, update; ``iters`` updates at most,
  stopping once the assignments repeat), optionally spherical and with empty clusters re-seeded;
* :func:`kmeans` — random or k-means++ starts, ``n_init`` runs, the lowest inertia kept.

The nearest-centroid search runs in row blocks (``[block, K]``, never ``[N, N]``) with torch, or with a
flat faiss index (``backend="faiss"``; ``"auto"`` takes faiss when it is installed). After the first
round only the centroids that moved are searched: a point whose own centroid did not move keeps every
unmoved centroid at its old distance, none nearer than its own, so only a moved one can take it. This
is exact Lloyd (same assignments as a full pass, up to float rounding of equal distances) and, after the
first rounds, few centroids move (SOP-sized data: 2.4% in round 2, 0.5% in round 3), so later rounds
cost a few percent of a full pass. faiss's own ``Kmeans`` runs every round in full, which at SOP scale
(11,316 clusters) took over 600 s where this takes 235 s (``benchmarks/results/evaluation_speed.json``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "torch", "faiss")
INITS = ("auto", "random", "k-means++")
PLUSPLUS_MAX_K = 1024  # init="auto": k-means++ up to here, k random items above (k sequential passes)
MAX_BLOCK_ELEMENTS = 2**23


def resolve_backend(backend: str) -> str:
    """``"torch"`` or ``"faiss"``; ``"auto"`` is faiss when installed. ValueError for anything else."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        from dmlkit.optional import has_faiss

        return "faiss" if has_faiss() else "torch"
    return backend


def _scores(x: Tensor, centroids: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    """``(‖c‖² − 2 x·c, index)`` of each row's nearest centroid (the squared distance minus ``‖x‖²``);
    ties go to the lower index."""
    if backend == "faiss":
        from dmlkit.optional import import_faiss

        faiss = import_faiss()
        xn = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(np.ascontiguousarray(centroids.detach().cpu().numpy(), dtype=np.float32))
        dist, idx = index.search(xn, 1)
        score = torch.from_numpy(dist[:, 0]).to(x.dtype) - (x * x).sum(1).cpu()
        return score.to(x.device), torch.from_numpy(idx[:, 0]).long().to(x.device)
    c_sq = (centroids * centroids).sum(1)
    rows = max(1, MAX_BLOCK_ELEMENTS // max(centroids.shape[0], 1))
    assign = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    score = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], rows):
        block = torch.addmm(c_sq.unsqueeze(0), x[s : s + rows], centroids.T, alpha=-2.0)
        score[s : s + rows], assign[s : s + rows] = block.min(dim=1)
    return score, assign


def nearest_centroid(x: Tensor, centroids: Tensor, backend: str = "torch") -> tuple[Tensor, Tensor]:
    """Squared Euclidean distance to, and index of, the nearest centroid: ``[N, D], [K, D] -> [N], [N]``.
    Ties go to the smaller index."""
    score, assign = _scores(x, centroids, resolve_backend(backend))
    return (score + (x * x).sum(1)).clamp_min(0), assign


def _reassign(x: Tensor, centroids: Tensor, assign: Tensor, score: Tensor, moved: Tensor, backend: str) -> None:
    """Lloyd's assignment step after only the centroids marked ``moved`` changed, in place (module docstring)."""
    stale = moved[assign]
    if 2 * int(stale.sum()) > x.shape[0]:  # mostly stale: one full pass is cheaper than the split
        stale = torch.ones_like(stale)
    full = torch.nonzero(stale).flatten()
    if full.numel() == x.shape[0]:
        score[:], assign[:] = _scores(x, centroids, backend)
    elif full.numel():
        score[full], assign[full] = _scores(x[full], centroids, backend)
    rest, cols = torch.nonzero(~stale).flatten(), torch.nonzero(moved).flatten()
    if rest.numel() and cols.numel():
        b, a = _scores(x[rest], centroids[cols], backend)
        a = cols[a]
        better = (b < score[rest]) | ((b == score[rest]) & (a < assign[rest]))  # ties: lower index, as min does
        assign[rest[better]], score[rest[better]] = a[better], b[better]


def _fill_empty(x: Tensor, x_sq: Tensor, assign: Tensor, score: Tensor, centroids: Tensor) -> Tensor:
    """Re-seed every empty cluster, in place, with the points farthest from their own centroid;
    ``-> bool [K]``, the re-seeded clusters (new centroids no other point was compared with yet)."""
    counts = torch.bincount(assign, minlength=len(centroids))
    empty = torch.nonzero(counts == 0).flatten()
    if len(empty):
        far = torch.argsort((score + x_sq).clamp_min(0), descending=True, stable=True)[: len(empty)]
        centroids[empty] = x[far]
        assign[far], score[far] = empty, -x_sq[far]  # distance 0 to their own new centroid
    return counts == 0


def lloyd(
    x: Tensor, centroids: Tensor, iters: int, *, spherical: bool = False, refill_empty: bool = False,
    backend: str = "torch",
) -> tuple[Tensor, Tensor, Tensor]:
    """Lloyd's k-means from ``centroids [K, D]`` on ``x [N, D]``: ``-> (labels [N], centroids [K, D], d² [N])``.

    ``iters`` updates at most (0: assign to the initial centroids), stopping once the assignments
    repeat; ``d²`` is each point's squared distance to its centroid (inertia = its sum). An empty
    cluster keeps its centroid, or with ``refill_empty`` takes the point farthest from its own centroid
    (every cluster then keeps a point when N >= K). ``spherical`` re-normalises the updated centroids.
    """
    backend = resolve_backend(backend)
    k = centroids.shape[0]
    centroids = centroids.clone()
    x_sq = (x * x).sum(1)
    assign = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    score = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    moved = torch.ones(k, dtype=torch.bool, device=x.device)  # first pass: every centroid is new
    _reassign(x, centroids, assign, score, moved, backend)
    refilled = _fill_empty(x, x_sq, assign, score, centroids) if refill_empty else ~moved
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        filled = counts > 0
        updated = centroids.clone()
        updated[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
        if spherical:
            updated = F.normalize(updated, dim=1)
        moved = (updated != centroids).any(dim=1) | refilled
        centroids = updated
        previous = assign.clone()
        _reassign(x, centroids, assign, score, moved, backend)
        if refill_empty:
            refilled = _fill_empty(x, x_sq, assign, score, centroids)
        if torch.equal(assign, previous):
            break  # assignments repeat: the remaining rounds would change nothing
    return assign, centroids, (score + x_sq).clamp_min(0)


def kmeans_plus_plus(x: Tensor, n_new: int, generator: torch.Generator, chosen: Tensor | None = None) -> Tensor:
    """k-means++ seeding: ``n_new`` rows of ``x [N, D]`` drawn with probability ∝ D(x)², D the distance
    to the nearest centre already chosen (``chosen [C, D]``, or the first centre uniform). ``-> [n_new, D]``.

    Distances by ``‖x‖² − 2 x·x_i + ‖x_i‖²`` (one matrix-vector pass per centre); when every point
    sits on a centre the next one is drawn uniformly.
    """
    if n_new > len(x):
        raise ValueError(f"k-means++ needs {n_new} new centres but there are only {len(x)} points; lower n_clusters")
    x_sq = (x * x).sum(1)

    def sq_dist(i: int) -> Tensor:
        return (x_sq - 2 * (x @ x[i]) + x_sq[i]).clamp_min_(0)

    picks: list[int] = []
    if chosen is None or len(chosen) == 0:
        if n_new == 0:
            return x.new_zeros(0, x.shape[1])
        picks.append(int(torch.randint(len(x), (1,), generator=generator)))
        min_d = sq_dist(picks[0])
    else:
        min_d = nearest_centroid(x, chosen.to(x.dtype))[0]
    while len(picks) < n_new:
        weights = min_d.double().cpu()
        if float(weights.sum()) <= 0:
            weights = torch.ones_like(weights)
        picks.append(int(torch.multinomial(weights, 1, generator=generator)))
        min_d = torch.minimum(min_d, sq_dist(picks[-1]))
    return x[torch.tensor(picks, dtype=torch.long, device=x.device)].clone()


def kmeans(
    x: Tensor, k: int, iters: int = 20, n_init: int = 1, init: str = "auto", seed: int = 0, backend: str = "torch",
) -> Tensor:
    """Lloyd's k-means; returns cluster ids ``[N]`` of the best of ``n_init`` runs (lowest inertia).

    ``init``: ``"k-means++"`` (D² sampling), ``"random"`` (k distinct items, as faiss and PML do) or
    ``"auto"``: k-means++ up to k = 1024 (CUB, Cars, MNIST...), random above. k-means++ makes k
    sequential passes over the data, about as long as the whole of Lloyd's at SOP scale (k = 11,316).
    Run ``r`` is seeded with ``seed + r``; ``iters`` updates at most (:func:`lloyd`); an empty cluster
    keeps its centroid.
    """
    if init not in INITS:
        raise ValueError(f"kmeans_init must be one of {INITS}, got {init!r}")
    backend = resolve_backend(backend)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= clusters <= points, got {k} clusters for {n} points")
    if init == "auto":
        init = "k-means++" if k <= PLUSPLUS_MAX_K else "random"
    best, best_inertia = None, float("inf")
    for run in range(n_init):
        gen = torch.Generator().manual_seed(seed + run)
        if init == "random":
            centroids = x[torch.randperm(n, generator=gen)[:k].to(x.device)]
        else:
            centroids = kmeans_plus_plus(x, k, gen)
        assign, _, dist = lloyd(x, centroids, iters, backend=backend)
        inertia = float(dist.sum())
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    return best.cpu()
