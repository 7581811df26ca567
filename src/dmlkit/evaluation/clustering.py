"""k-means and NMI (EVALUATION.md §3).

NMI = I(Ω; C) / ((H(Ω) + H(C)) / 2), the arithmetic normalisation (scikit-learn's default), computed
from the contingency table of (class, cluster) pairs without any N×N object.
"""
from __future__ import annotations

import numpy as np
import torch

from dmlkit.evaluation.knn import MAX_BLOCK_ELEMENTS

KMEANS_INITS = ("auto", "random", "k-means++")
KMEANS_PLUSPLUS_MAX_K = 1024
KMEANS_BACKENDS = ("torch", "faiss")


def nmi_score(labels: torch.Tensor | np.ndarray, clusters: torch.Tensor | np.ndarray) -> float:
    """Arithmetic NMI of two labelings of the same N items (any integer ids; permutation-invariant).

    Returns 1.0 when both labelings have a single group (0/0, the scikit-learn convention).
    """
    a = np.unique(np.asarray(torch.as_tensor(labels).cpu()), return_inverse=True)[1].ravel()
    b = np.unique(np.asarray(torch.as_tensor(clusters).cpu()), return_inverse=True)[1].ravel()
    if a.shape != b.shape:
        raise ValueError(f"labels ({a.shape[0]}) and clusters ({b.shape[0]}) must have the same length")
    n = a.shape[0]
    pairs, counts = np.unique(a.astype(np.int64) * (b.max() + 1) + b, return_counts=True)
    pa, pb = np.bincount(a) / n, np.bincount(b) / n
    h_a = -np.sum(pa * np.log(pa))
    h_b = -np.sum(pb * np.log(pb))
    if h_a == 0.0 and h_b == 0.0:
        return 1.0
    p = counts / n
    ia, ib = pairs // (b.max() + 1), pairs % (b.max() + 1)
    mi = max(float(np.sum(p * (np.log(p) - np.log(pa[ia]) - np.log(pb[ib])))), 0.0)
    return float(mi / ((h_a + h_b) / 2.0))


def _nearest(x: torch.Tensor, centroids: torch.Tensor, c_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row and ``‖c‖² − 2 x·c`` to it (squared distance minus ``‖x‖²``), in row blocks."""
    rows = max(1, MAX_BLOCK_ELEMENTS // max(centroids.shape[0], 1))
    assign = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    score = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], rows):
        block = torch.addmm(c_sq.unsqueeze(0), x[s : s + rows], centroids.T, alpha=-2.0)
        score[s : s + rows], assign[s : s + rows] = block.min(dim=1)
    return assign, score


def _reassign(
    x: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor, score: torch.Tensor, moved: torch.Tensor
) -> None:
    """Lloyd's assignment step after only the centroids marked ``moved`` changed, in place.

    A point whose centroid did not move still has every unmoved centroid at its old distance, none
    nearer than its own, so only the moved ones can take it: it is compared with those alone. Points
    of moved centroids are reassigned against all of them. Same result as a full pass (up to float
    rounding of equal distances); after the first rounds few centroids move, so rounds get cheap.
    """
    c_sq = (centroids * centroids).sum(1)
    stale = moved[assign]
    if 2 * int(stale.sum()) > x.shape[0]:  # mostly stale: one full pass is cheaper than the split
        stale = torch.ones_like(stale)
    full = torch.nonzero(stale).flatten()
    if full.numel() == x.shape[0]:
        assign[:], score[:] = _nearest(x, centroids, c_sq)
    elif full.numel():
        assign[full], score[full] = _nearest(x[full], centroids, c_sq)
    rest, cols = torch.nonzero(~stale).flatten(), torch.nonzero(moved).flatten()
    if rest.numel() and cols.numel():
        a, b = _nearest(x[rest], centroids[cols], c_sq[cols])
        a = cols[a]
        better = (b < score[rest]) | ((b == score[rest]) & (a < assign[rest]))  # ties: lower index, as min does
        assign[rest[better]], score[rest[better]] = a[better], b[better]


def _init_centroids(x: torch.Tensor, k: int, init: str, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    if init == "random":
        return x[torch.randperm(n, generator=gen)[:k].to(x.device)].clone()
    # k-means++ (Arthur & Vassilvitskii 2007): each next centre drawn with probability ∝ D(x)².
    x_sq = (x * x).sum(1)

    def sq_dist(i: int) -> torch.Tensor:  # ‖x − x_i‖² for all rows: one matrix-vector pass
        return (x_sq - 2 * (x @ x[i]) + x_sq[i]).clamp_min_(0)

    chosen = [int(torch.randint(n, (1,), generator=gen))]
    d2 = sq_dist(chosen[0])
    for _ in range(1, k):
        weights = d2.double().cpu()
        total = float(weights.sum())
        nxt = int(torch.multinomial(weights, 1, generator=gen)) if total > 0 else int(torch.randint(n, (1,), generator=gen))
        chosen.append(nxt)
        d2 = torch.minimum(d2, sq_dist(nxt))
    return x[torch.tensor(chosen, device=x.device)].clone()


def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 20,
    n_init: int = 1,
    init: str = "auto",
    seed: int = 0,
    backend: str = "torch",
) -> torch.Tensor:
    """Lloyd's k-means; returns cluster ids ``[N]`` of the best of ``n_init`` runs (lowest inertia).

    ``init``: ``"k-means++"`` (D² sampling), ``"random"`` (k distinct items, as faiss and PML do) or
    ``"auto"``: k-means++ up to k = 1024 (CUB, Cars, MNIST...), random above. k-means++ makes k
    sequential passes over the data, about as long as the whole of Lloyd's at SOP scale (k = 11,316).

    torch backend: ``iters`` rounds of (assign, update), stopping early once assignments repeat
    (the remaining rounds would change nothing); an empty cluster keeps its centroid; run ``r`` is
    seeded with ``seed + r``. faiss backend: ``faiss.Kmeans(niter=iters, seed=seed + r)`` per run
    from the same initial centroids, with no subsampling (``max_points_per_centroid = N``).
    """
    if init not in KMEANS_INITS:
        raise ValueError(f"kmeans_init must be one of {KMEANS_INITS}, got {init!r}")
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"kmeans_backend must be one of {KMEANS_BACKENDS}, got {backend!r}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= clusters <= points, got {k} clusters for {n} points")
    if init == "auto":
        init = "k-means++" if k <= KMEANS_PLUSPLUS_MAX_K else "random"
    best, best_inertia = None, float("inf")
    for run in range(n_init):
        gen = torch.Generator().manual_seed(seed + run)
        centroids = _init_centroids(x, k, init, gen)
        if backend == "faiss":
            import faiss

            xn = np.ascontiguousarray(x.detach().cpu().float().numpy())
            km = faiss.Kmeans(xn.shape[1], k, niter=iters, seed=seed + run, max_points_per_centroid=max(n, 1),
                              min_points_per_centroid=1, verbose=False)
            km.train(xn, init_centroids=np.ascontiguousarray(centroids.cpu().float().numpy()))
            dist, assign = km.index.search(xn, 1)
            inertia, assign = float(dist.sum()), torch.from_numpy(assign.ravel()).long()
            if inertia < best_inertia:
                best, best_inertia = assign, inertia
            continue
        assign = torch.zeros(n, dtype=torch.long, device=x.device)
        score = torch.empty(n, dtype=x.dtype, device=x.device)
        moved = torch.ones(k, dtype=torch.bool, device=x.device)  # round 1: every centroid is new
        for round_ in range(iters):
            previous = assign.clone()
            _reassign(x, centroids, assign, score, moved)
            if round_ > 0 and torch.equal(assign, previous):
                break  # assignments repeat: the remaining rounds would change nothing
            sums = torch.zeros_like(centroids).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k)
            filled = counts > 0
            updated = centroids.clone()
            updated[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
            moved = (updated != centroids).any(dim=1)
            centroids = updated
        else:
            _reassign(x, centroids, assign, score, moved)  # the assignment to the final centroids
        dist = score + (x * x).sum(1)
        inertia = float(dist.clamp_min(0).sum())
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    return best.cpu()
