"""How good is a pseudo-supervision? Label purity and correlation with ground truth (PLM.md §8, Table 2).

A pseudo-supervision on items with ground-truth labels ``y`` gives groups, a pairwise similarity ŝ,
or both:

* **purity** = Σ_G max_c |G ∩ {y = c}| / Σ_G |G| (classical purity for a partition; PLM's overlapping
  neighbourhoods X_i otherwise); ``purity="anchor"``: mean_i |{j ∈ X_i : y_j = y_i}| / |X_i|.
* **correlation** = Pearson r over unordered pairs i < j between g_ij = 1[y_i = y_j] and ŝ_ij
  (for a partition ŝ = 1[same cluster], i.e. the φ coefficient, computed from contingency pair counts).
* **pair precision / recall** at a threshold t: pairs with ŝ >= t predicted "same class".
* **triplets** (SSDML's mined ``(anchor, positive, negative)``): the fractions whose positive /
  negative shares the anchor's class (``positive_same_class``, ``negative_same_class``), ``correct``
  (positive same, negative other) and ``inverted`` (the reverse).

Pair statistics are streamed as sums (Σŝ, Σŝ², Σg, Σŝg, ...) so no N×N object is ever built over a
large set: :func:`quality_table` samples the items into batches of a method's batch size, as a method
sees them in training, and pools the pairs of all batches.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Estimate = torch.Tensor | np.ndarray | Mapping[str, object]
Estimator = Callable[[torch.Tensor], Estimate]
FULL_SCOPE_MAX_ITEMS = 4096
PURITY_KINDS = ("group", "anchor")
ESTIMATE_KEYS = ("groups", "similarity", "triplets")
TRIPLET_KEYS = ("positive_same_class", "negative_same_class", "correct", "inverted")


@dataclass
class PairStats:
    """Running sums over item pairs i < j of ŝ_ij and g_ij = 1[y_i = y_j]."""

    n: float = 0.0
    s: float = 0.0
    s2: float = 0.0
    g: float = 0.0
    sg: float = 0.0
    predicted: float = 0.0  # pairs with ŝ >= threshold
    true_positive: float = 0.0  # ... that share a class

    def add(self, other: PairStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def correlation(self) -> float:
        """Pearson r of ŝ and g; NaN (with a warning) when either is constant."""
        var_s = self.n * self.s2 - self.s * self.s
        var_g = self.n * self.g - self.g * self.g  # g² = g
        if var_s <= 1e-12 * max(self.n * self.s2, 1.0) or var_g <= 0:
            warnings.warn("pair correlation undefined: the similarity or the same-class indicator is constant",
                          stacklevel=2)
            return math.nan
        return float((self.n * self.sg - self.s * self.g) / math.sqrt(var_s * var_g))

    def precision(self) -> float:
        return self.true_positive / self.predicted if self.predicted else math.nan

    def recall(self) -> float:
        return self.true_positive / self.g if self.g else math.nan


def _codes(x: torch.Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    return np.unique(np.asarray(torch.as_tensor(x).cpu()).ravel(), return_inverse=True)[1].ravel()


def partition_pair_stats(labels: torch.Tensor | np.ndarray, clusters: torch.Tensor | np.ndarray) -> PairStats:
    """Pair sums of ŝ = 1[same cluster] from the contingency table: n11 = Σ_{c,k} C(n_ck, 2), etc."""
    y, c = _codes(labels), _codes(clusters)
    if y.shape != c.shape:
        raise ValueError(f"labels ({y.shape[0]}) and clusters ({c.shape[0]}) must have the same length")
    pair2 = lambda m: float(np.sum(m * (m - 1) / 2.0))
    joint = np.unique(y * (c.max() + 1) + c, return_counts=True)[1].astype(np.float64)
    n11, same_cluster, same_class = pair2(joint), pair2(np.bincount(c).astype(np.float64)), pair2(
        np.bincount(y).astype(np.float64))
    n = y.shape[0] * (y.shape[0] - 1) / 2.0
    return PairStats(n, same_cluster, same_cluster, same_class, n11, same_cluster, n11)


def similarity_pair_stats(labels: torch.Tensor | np.ndarray, similarity: torch.Tensor | np.ndarray,
                          threshold: float = 0.5) -> PairStats:
    """Pair sums of a batch-sized ``[b, b]`` similarity over its upper triangle i < j."""
    s = torch.as_tensor(similarity).double().cpu()
    y = torch.as_tensor(labels).cpu()
    if s.dim() != 2 or s.shape[0] != s.shape[1] or s.shape[0] != y.shape[0]:
        raise ValueError(f"similarity must be [b, b] with b = {y.shape[0]} items, got {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("similarity contains NaN or inf")
    iu = torch.triu_indices(s.shape[0], s.shape[0], offset=1)
    sv, gv = s[iu[0], iu[1]], (y[iu[0]] == y[iu[1]]).double()
    hit = (sv >= threshold).double()
    return PairStats(float(sv.numel()), float(sv.sum()), float((sv * sv).sum()), float(gv.sum()),
                     float((sv * gv).sum()), float(hit.sum()), float((hit * gv).sum()))


def group_purity_sums(labels: torch.Tensor | np.ndarray, groups: object, kind: str = "group") -> tuple[float, float, float]:
    """``(numerator, denominator, total group size)`` of purity over one set of groups.

    Args:
        labels: ``[b]`` ground truth.
        groups: a partition (``[b]`` cluster ids), a padded ``[G, m]`` int array of member indices
            (``-1`` = padding), or a list of index sequences. For ``kind="anchor"`` group ``i``
            must be item ``i``'s group (PLM's X_i); a partition gives each item its cluster.

    purity = numerator / denominator; mean group size = total / number of groups.
    """
    y = _codes(labels)
    if kind not in PURITY_KINDS:
        raise ValueError(f"purity must be one of {PURITY_KINDS}, got {kind!r}")
    g = groups if isinstance(groups, (torch.Tensor, np.ndarray)) else None
    if _is_partition(groups):
        c = _codes(groups)
        table = np.zeros((c.max() + 1, y.max() + 1))
        np.add.at(table, (c, y), 1.0)
        sizes = table.sum(1)
        if kind == "group":
            return float(table.max(1).sum()), float(sizes.sum()), float(sizes.sum())
        return float(np.sum(table**2 / np.maximum(sizes, 1)[:, None])), float(len(y)), float(sizes.sum())
    if g is not None:
        padded = np.asarray(torch.as_tensor(g).cpu(), dtype=np.int64)
    else:
        members = [np.asarray(m, dtype=np.int64).ravel() for m in groups]  # type: ignore[union-attr]
        padded = np.full((len(members), max((len(m) for m in members), default=0)), -1, dtype=np.int64)
        for row, m in enumerate(members):
            padded[row, : len(m)] = m
    valid = padded >= 0
    if padded.size and padded.max() >= len(y):
        raise ValueError(f"group member index {padded.max()} out of range for {len(y)} items")
    member_labels = np.where(valid, y[np.clip(padded, 0, None)], -1)
    sizes = valid.sum(1).astype(np.float64)
    if kind == "anchor":
        if padded.shape[0] != len(y):
            raise ValueError("purity='anchor' needs one group per item (group i = item i's neighbourhood)")
        same = ((member_labels == y[:, None]) & valid).sum(1)
        return float(np.sum(same / np.maximum(sizes, 1))), float(len(y)), float(sizes.sum())
    onehot = (member_labels[:, :, None] == np.arange(y.max() + 1)) & valid[:, :, None]
    return float(onehot.sum(1).max(1).sum()), float(sizes.sum()), float(sizes.sum())


def triplet_counts(triplets: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[T, positive same, negative same, correct, inverted]`` counts of mined ``[T, 3]`` (anchor,
    positive, negative) index triplets against ground truth ``labels`` ``[b]`` (see :data:`TRIPLET_KEYS`)."""
    t = np.asarray(torch.as_tensor(triplets).cpu(), dtype=np.int64).reshape(-1, 3)
    y = np.asarray(torch.as_tensor(labels).cpu()).ravel()
    if t.size and (t.min() < 0 or t.max() >= len(y)):
        raise ValueError(f"triplet index out of range for {len(y)} items")
    yt = y[t]
    positive, negative = yt[:, 1] == yt[:, 0], yt[:, 2] == yt[:, 0]
    return np.array([len(t), positive.sum(), negative.sum(), (positive & ~negative).sum(),
                     (~positive & negative).sum()], dtype=np.float64)


def triplet_fractions(triplets: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> dict[str, float]:
    """:data:`TRIPLET_KEYS` fractions of the triplets (NaN when there are none)."""
    counts = triplet_counts(triplets, labels)
    return {key: float(value / counts[0]) if counts[0] else math.nan for key, value in zip(TRIPLET_KEYS, counts[1:])}


def revealed_labels(labels: torch.Tensor | np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Visible labels ``[N]`` for an estimator that reads some (SSDML's propagation): ``per_class``
    seeded items of every class keep their label, the rest are −1 (unlabeled)."""
    y = np.asarray(torch.as_tensor(labels).cpu()).ravel()
    rng = np.random.default_rng(seed)
    visible = np.full(len(y), -1, dtype=np.int64)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        visible[rng.choice(members, min(per_class, len(members)), replace=False)] = c
    return visible


def kmeans_labels(embeddings: torch.Tensor, n_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means pseudo labels (:func:`dmlkit.kmeans.kmeans`: k-means++, one run, Lloyd to convergence
    or 300 rounds, scikit-learn's ``max_iter``)."""
    from dmlkit.kmeans import kmeans

    x = torch.as_tensor(embeddings).detach().cpu().double()
    return kmeans(x, n_clusters, iters=300, init="k-means++", seed=seed).numpy()


def agglomerative_labels(embeddings: torch.Tensor, n_clusters: int, linkage: str = "ward") -> np.ndarray:
    """scikit-learn agglomerative (Ward by default) pseudo labels; O(n²) memory, so batch-sized n only."""
    from sklearn.cluster import AgglomerativeClustering

    x = np.asarray(torch.as_tensor(embeddings).detach().cpu().double())
    return AgglomerativeClustering(n_clusters=n_clusters, linkage=linkage).fit_predict(x)


def _is_partition(groups: object) -> bool:
    return isinstance(groups, (torch.Tensor, np.ndarray)) and np.asarray(torch.as_tensor(groups).cpu()).ndim == 1


def _split_estimate(estimate: Estimate, b: int) -> tuple[object | None, torch.Tensor | None, object | None]:
    """An estimator's output as ``(groups, similarity, triplets)``."""
    if isinstance(estimate, Mapping):
        unknown = set(estimate) - set(ESTIMATE_KEYS)
        if unknown:
            raise ValueError(f"estimator returned unknown keys {sorted(unknown)}; use {', '.join(ESTIMATE_KEYS)}")
        sim = estimate.get("similarity")
        return estimate.get("groups"), None if sim is None else torch.as_tensor(sim), estimate.get("triplets")
    t = torch.as_tensor(estimate)
    if t.dim() == 1 and not t.is_floating_point():
        return t, None, None
    if t.dim() == 2 and t.shape == (b, b):
        return None, t, None
    raise ValueError(
        f"an estimator must return pseudo labels [b] (integers), a similarity [b, b] or a dict with 'groups'/"
        f"'similarity'/'triplets'; got shape {tuple(t.shape)} dtype {t.dtype} for b = {b}"
    )


def quality_table(
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    estimators: Mapping[str, Estimator] | None = None,
    batch_size: int = 100,
    num_batches: int | None = None,
    scope: str = "batch",
    baselines: Sequence[str] = ("kmeans", "agglomerative"),
    n_clusters: int | None = None,
    threshold: float = 0.5,
    purity: str = "group",
    seed: int = 0,
    visible_labels: torch.Tensor | np.ndarray | None = None,
    labels_per_class: int = 5,
) -> list[dict]:
    """One row of pseudo-supervision quality per estimator (PLM Table 2 style).

    Args:
        embeddings: ``[N, D]`` embeddings the estimators read (e.g. the test split under an untrained
            backbone); labels: ``[N]`` ground truth, read only here.
        estimators: name -> ``callable(embeddings [b, D]) ->`` pseudo labels ``[b]`` (int), a similarity
            ``[b, b]``, or a dict of ``"groups"`` (as in :func:`group_purity_sums`), ``"similarity"`` and/or
            ``"triplets"`` (``[T, 3]`` batch indices, scored by :func:`triplet_counts`). An estimator with
            the attribute ``needs_labels = True`` is called ``f(embeddings, visible labels [b])``; one
            with ``whole_set = True`` is called once on all N items, whatever ``scope``.
        batch_size, num_batches: ``scope="batch"`` draws a seeded permutation and cuts it into
            ⌊N / batch_size⌋ batches (at most ``num_batches``); every estimator sees the same batches and
            the pairs of all batches are pooled. ``scope="full"`` calls each estimator once on all N
            items (N <= 4096 unless every output is a partition).
        baselines: any of ``"kmeans"``, ``"agglomerative"`` (Ward), run on the same items with
            ``n_clusters`` clusters (default: the number of classes among those items).
        threshold: ŝ >= threshold counts as a predicted same-class pair.
        purity: ``"group"`` or ``"anchor"`` (see module docstring).
        visible_labels: ``[N]`` the labels a ``needs_labels`` estimator reads (−1 = unlabeled), e.g. a
            semi-supervised run's; None: :func:`revealed_labels` with ``labels_per_class`` (seeded).

    Returns:
        dicts ``{"method", "purity", "mean_group_size", "correlation", "pair_precision", "pair_recall",
        "threshold", "num_pairs", "num_items", "num_triplets", *TRIPLET_KEYS}``; values that do not
        apply are ``None``.
    """
    x = torch.as_tensor(embeddings)
    y = torch.as_tensor(np.asarray(labels)).long()
    if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"embeddings [N, D] and labels [N] must align, got {tuple(x.shape)} and {tuple(y.shape)}")
    if scope not in ("batch", "full"):
        raise ValueError(f"scope must be 'batch' or 'full', got {scope!r}")
    unknown = set(baselines) - {"kmeans", "agglomerative"}
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from 'kmeans', 'agglomerative'")
    batches = _batches(x.shape[0], scope, batch_size, num_batches, seed)
    visible = _visible(y, estimators or {}, visible_labels, labels_per_class, seed)
    named: dict[str, tuple[Callable, list[torch.Tensor], str]] = {
        k: (_baseline(k, y, n_clusters, seed), batches, scope) for k in baselines}
    everything = [torch.arange(x.shape[0])]
    for name, f in (estimators or {}).items():
        call = (lambda xb, idx, f=f: f(xb, visible[idx])) if getattr(f, "needs_labels", False) else (
            lambda xb, idx, f=f: f(xb))
        named[name] = (call, everything, "full") if getattr(f, "whole_set", False) else (call, batches, scope)
    return [_estimator_row(name, fn, x, y, its_batches, its_scope, threshold, purity)
            for name, (fn, its_batches, its_scope) in named.items()]


def _baseline(kind: str, y: torch.Tensor, n_clusters: int | None, seed: int) -> Callable:
    """``(xb, idx) -> pseudo labels``: k-means or Ward with ``n_clusters`` (default: classes among ``y[idx]``)."""
    def run(xb: torch.Tensor, idx: torch.Tensor) -> np.ndarray:
        k = n_clusters or int(torch.unique(y[idx]).numel())
        return kmeans_labels(xb, k, seed) if kind == "kmeans" else agglomerative_labels(xb, k)

    return run


def _visible(y: torch.Tensor, estimators: Mapping[str, Estimator], visible_labels: object, per_class: int,
             seed: int) -> torch.Tensor | None:
    """The labels ``needs_labels`` estimators read: ``visible_labels``, else :func:`revealed_labels` if any needs them."""
    if visible_labels is None and any(getattr(f, "needs_labels", False) for f in estimators.values()):
        visible_labels = revealed_labels(y, per_class, seed)
    visible = None if visible_labels is None else torch.as_tensor(np.asarray(visible_labels)).long()
    if visible is not None and visible.shape != y.shape:
        raise ValueError(f"visible_labels must have one entry per item ({y.shape[0]}), got {tuple(visible.shape)}")
    return visible


def _batches(n: int, scope: str, batch_size: int, num_batches: int | None, seed: int) -> list[torch.Tensor]:
    """Index batches of :func:`quality_table`: a seeded permutation cut into ⌊n / batch_size⌋ (at most
    ``num_batches``) batches for ``scope="batch"``, else all ``n`` items in one."""
    if scope != "batch":
        return [torch.arange(n)]
    if not 2 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [2, N={n}], got {batch_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    count = n // batch_size if num_batches is None else min(num_batches, n // batch_size)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]


def _estimator_row(name: str, fn: Callable, x: torch.Tensor, y: torch.Tensor, batches: Sequence[torch.Tensor],
                   scope: str, threshold: float, purity: str) -> dict:
    """One :func:`quality_table` row: ``fn(xb, idx)`` run on every batch, its pairs, groups and triplets pooled."""
    stats, num, den, total, groups_seen, has_groups, has_sim = PairStats(), 0.0, 0.0, 0.0, 0, False, False
    triplets = None  # pooled triplet_counts
    for idx in batches:
        xb, yb = x[idx], y[idx]
        groups, sim, mined = _split_estimate(fn(xb, idx), len(idx))
        if sim is not None:
            if scope == "full" and len(idx) > FULL_SCOPE_MAX_ITEMS:
                raise ValueError(
                    f"{name}: a full {len(idx)}x{len(idx)} similarity is too large; use scope='batch'"
                )
            stats.add(similarity_pair_stats(yb, sim, threshold))
            has_sim = True
        elif _is_partition(groups):
            stats.add(partition_pair_stats(yb, groups))  # ŝ = 1[same cluster]: any threshold in (0, 1]
            has_sim = True
        if groups is not None:
            a, b, t = group_purity_sums(yb, groups, purity)
            num, den, total, has_groups = num + a, den + b, total + t, True
            groups_seen += len(np.unique(_codes(groups))) if _is_partition(groups) else len(groups)
        if mined is not None:
            counts = triplet_counts(mined, yb)
            triplets = counts if triplets is None else triplets + counts
    fractions: dict[str, float | None] = dict.fromkeys(TRIPLET_KEYS)
    if triplets is not None:
        fractions = {key: float(v / triplets[0]) if triplets[0] else math.nan for key, v in zip(TRIPLET_KEYS, triplets[1:])}
    return {
        "method": name,
        "purity": num / den if has_groups and den else None,
        "mean_group_size": total / groups_seen if has_groups and groups_seen else None,
        "correlation": stats.correlation() if has_sim else None,
        "pair_precision": stats.precision() if has_sim else None,
        "pair_recall": stats.recall() if has_sim else None,
        "threshold": threshold,
        "num_pairs": int(stats.n),
        "num_items": int(sum(len(i) for i in batches)),
        "num_triplets": int(triplets[0]) if triplets is not None else None,
        **fractions,
    }


def format_quality_table(rows: Sequence[Mapping[str, object]], digits: int = 3) -> str:
    """Markdown table of :func:`quality_table` rows ("–" where a value does not apply)."""
    def cell(v: object) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    t = rows[0]["threshold"] if rows else 0.5
    head = ["method", "purity", "mean group size", "correlation", f"pair precision@{t}", f"pair recall@{t}", "pairs"]
    keys = ["method", "purity", "mean_group_size", "correlation", "pair_precision", "pair_recall", "num_pairs"]
    if any(r.get("num_triplets") is not None for r in rows):  # SSDML-style mined triplets
        head += ["triplets", "positive same class", "negative same class", "correct"]
        keys += ["num_triplets", "positive_same_class", "negative_same_class", "correct"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
