"""Image grids: retrieval results (query + top-k) and pseudo-similarity neighbours (STML supp. Fig. 2)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dmlkit.evaluation.knn import knn_search
from dmlkit.viz.names import class_name, is_unit_norm, similarity_scores
from dmlkit.viz.plots import new_figure, save

SAME, OTHER, QUERY = "#1a9850", "#d73027", "#4575b4"


def _image(images: object, i: int) -> np.ndarray:
    """Item ``i`` as an ``[H, W]`` or ``[H, W, 3]`` float array in [0, 1].

    ``images``: a ``[N, C, H, W]`` tensor/array (float in [0, 1] or uint8), or a dataset whose items
    are tensors or dicts with ``"image"``.
    """
    item = images[i]  # type: ignore[index]
    if isinstance(item, dict):
        item = item["image"]
    a = np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item)
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    return np.clip(a, 0.0, 1.0)


def _tile(ax, image: np.ndarray, colour: str | None, caption: str = "") -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
    if caption:
        ax.set_xlabel(caption, fontsize=8)


def _pick(n: int, count: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))


def retrieval_grid(
    images: object,
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    path: str | Path,
    n_queries: int = 8,
    top_k: int = 5,
    metric: str = "euclidean",
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> Path:
    """One row per query (blue border), then its ``top_k`` nearest other items: green border = same
    class, red = another class (self removed by index, ties by index, as in :mod:`dmlkit.evaluation`).

    Each tile is captioned with its class (``class_names[label]`` where given) and each neighbour with
    its similarity to the query (:func:`dmlkit.viz.names.similarity_scores`)."""
    x = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
    y = np.asarray(torch.as_tensor(np.asarray(labels)).cpu())
    if x.shape[0] != len(y) or len(images) != len(y):  # type: ignore[arg-type]
        raise ValueError(f"images ({len(images)}), embeddings ({x.shape[0]}) and labels ({len(y)}) must align")  # type: ignore[arg-type]
    top_k = min(top_k, len(y) - 1)
    queries = _pick(len(y), n_queries, seed)
    dist, idx = knn_search(x[queries], top_k + 1, gallery=x, metric=metric)
    own = idx == torch.as_tensor(queries).unsqueeze(1)
    own[~own.any(dim=1), -1] = True
    idx = idx[~own].view(len(queries), top_k).numpy()
    scores, score_name = similarity_scores(dist[~own].view(len(queries), top_k), metric, is_unit_norm(x))
    fig = new_figure(1.3 * (top_k + 1), 1.45 * len(queries))
    for r, q in enumerate(queries):
        ax = fig.add_subplot(len(queries), top_k + 1, r * (top_k + 1) + 1)
        _tile(ax, _image(images, int(q)), QUERY, f"query: {class_name(y[q], class_names)}")
        for c, j in enumerate(idx[r]):
            ax = fig.add_subplot(len(queries), top_k + 1, r * (top_k + 1) + c + 2)
            _tile(ax, _image(images, int(j)), SAME if y[j] == y[q] else OTHER,
                  f"#{c + 1} {class_name(y[j], class_names)}\n{float(scores[r, c]):.3f}")
    fig.suptitle(f"query (blue) and its top-{top_k}: green = same class, red = other class; "
                 f"under each: class, {score_name}", fontsize=10)
    return save(fig, path)


def similarity_grid(
    images: object,
    similarity: torch.Tensor | np.ndarray,
    path: str | Path,
    top: int = 8,
    n_anchors: int = 6,
    labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> Path:
    """For a few anchors of a batch, the ``top`` items of highest pseudo-similarity, each captioned
    with its value (STML supplement Fig. 2). With ``labels`` the borders show same class (green) or not (red)
    and the captions name the class (``class_names[label]`` where given).

    ``similarity``: ``[b, b]`` over the ``b`` images of one batch (the anchor itself is skipped).
    """
    s = torch.as_tensor(np.asarray(similarity) if not isinstance(similarity, torch.Tensor) else similarity).double()
    b = s.shape[0]
    if s.dim() != 2 or s.shape[1] != b or len(images) != b:  # type: ignore[arg-type]
        raise ValueError(f"similarity must be [b, b] over the b = {len(images)} images, got {tuple(s.shape)}")  # type: ignore[arg-type]
    y = None if labels is None else np.asarray(torch.as_tensor(np.asarray(labels)).cpu())
    top = min(top, b - 1)
    anchors = _pick(b, n_anchors, seed)
    masked = s[anchors].clone()
    masked[torch.arange(len(anchors)), torch.as_tensor(anchors)] = -float("inf")
    order = torch.sort(-masked, dim=1, stable=True).indices[:, :top].numpy()
    fig = new_figure(1.3 * (top + 1), 1.5 * len(anchors))
    for r, a in enumerate(anchors):
        ax = fig.add_subplot(len(anchors), top + 1, r * (top + 1) + 1)
        _tile(ax, _image(images, int(a)), QUERY, "anchor" if y is None else f"anchor: {class_name(y[a], class_names)}")
        for c, j in enumerate(order[r]):
            colour = None if y is None else (SAME if y[j] == y[a] else OTHER)
            named = "" if y is None else f"{class_name(y[j], class_names)}\n"
            ax = fig.add_subplot(len(anchors), top + 1, r * (top + 1) + c + 2)
            _tile(ax, _image(images, int(j)), colour, f"{named}{float(s[a, j]):.2f}")
    fig.suptitle(f"anchor (blue) and its top-{top} by pseudo-similarity", fontsize=10)
    return save(fig, path)
