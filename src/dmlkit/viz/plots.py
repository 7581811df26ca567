"""Embedding maps (t-SNE) and training curves, drawn with matplotlib's Agg canvas (no pyplot state)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dmlkit.viz.report import METRIC_ORDER, ordered_metric_keys


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: safe in headless runs and threads."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def _numpy(x: torch.Tensor | np.ndarray | Sequence) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)


def embedding_map(
    embeddings: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    path: str | Path,
    max_classes: int = 10,
    max_points: int = 2000,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    tsne_iters: int = 1000,
    threads: int | None = 1,
) -> Path:
    """2-D t-SNE map of the embeddings, one colour per class.

    Keeps the ``max_classes`` largest classes (ties: smaller id) and a seeded sample of at most
    ``max_points`` of their items; 2-D embeddings are drawn as they are. ``tsne_iters`` (>= 250) is
    scikit-learn's ``max_iter``. ``threads`` caps t-SNE's OpenMP threads (``None``: library default);
    1 is the default because spinning OpenMP workers slow t-SNE down many-fold on a shared machine.
    """
    x, y = _numpy(embeddings).astype(np.float64), _numpy(labels).astype(np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"embeddings [N, D] and labels [N] must align, got {x.shape} and {y.shape}")
    classes, counts = np.unique(y, return_counts=True)
    keep_classes = classes[np.lexsort((classes, -counts))[:max_classes]]
    idx = np.flatnonzero(np.isin(y, keep_classes))
    rng = np.random.default_rng(seed)
    if len(idx) > max_points:
        idx = np.sort(rng.choice(idx, max_points, replace=False))
    x, y = x[idx], y[idx]
    if x.shape[1] != 2 and len(x) > 3:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads):
            x = TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed,
                     max_iter=tsne_iters).fit_transform(x)
    elif x.shape[1] != 2:
        x = np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1]))))
    fig = new_figure(7, 6)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10" if len(keep_classes) <= 10 else "tab20"]
    for i, c in enumerate(sorted(keep_classes)):
        sel = y == c
        name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        ax.scatter(x[sel, 0], x[sel, 1], s=9, color=cmap(i % cmap.N), label=name, alpha=0.8, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(x)} embeddings, {len(keep_classes)} classes")
    ax.legend(markerscale=2.5, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="class")
    return save(fig, path)


def pool_map(
    embeddings: np.ndarray, labels: np.ndarray, path: str | Path, seed: int = 0, title: str = ""
) -> Path:
    """2-D t-SNE map: labeled items (label >= 0) coloured by class, unlabeled items (-1) in grey."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        xy = TSNE(
            2, perplexity=min(30.0, (len(embeddings) - 1) / 3), init="pca", random_state=seed
        ).fit_transform(embeddings.astype(np.float64))
    fig = new_figure(7, 6)
    ax = fig.add_subplot()
    pool = labels < 0
    ax.scatter(xy[pool, 0], xy[pool, 1], s=6, color="0.75", label="unlabeled", linewidths=0)
    cmap = matplotlib.colormaps["tab10"]
    for i, c in enumerate(np.unique(labels[~pool])):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=9, color=cmap(i % cmap.N), label=str(c), linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(markerscale=2.5, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return save(fig, path)


def metric_curves(history: Sequence[Mapping[str, float]], path: str | Path, keys: Sequence[str] | None = None) -> Path:
    """Evaluation metrics (left; ``keys`` or every recall@/precision@/r_precision/map@r/nmi key) and
    losses (right, any key containing "loss") against the epoch.

    ``history`` is the engine's list of ``{"epoch": e, "recall@1": ..., "loss": ...}`` dicts; a metric
    missing from some epochs is drawn where present.
    """
    if not history:
        raise ValueError("history is empty; nothing to plot")
    numeric = {k for row in history for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}
    losses = sorted(k for k in numeric if "loss" in k)
    metrics = list(keys) if keys is not None else ordered_metric_keys(
        [k for k in numeric if k.startswith(METRIC_ORDER)])
    panels = [("metric", metrics)] + ([("loss", losses)] if losses else [])
    fig = new_figure(6 * len(panels), 4)
    for p, (ylabel, names) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        for name in names:
            pts = [(row.get("epoch", i), row[name]) for i, row in enumerate(history) if name in row]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.set_title("test metrics" if ylabel == "metric" else "training loss")
        ax.legend(fontsize=8)
    return save(fig, path)
