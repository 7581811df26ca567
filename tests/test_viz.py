"""Pictures: files are written, readable, and show what they claim (borders, neighbours, captions)."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from dmlkit.viz import (
    embedding_map,
    metric_curves,
    metrics_table,
    retrieval_grid,
    similarity_grid,
    write_report,
)
from dmlkit.viz.grids import OTHER, SAME


def data(n_classes=4, per_class=6):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    images = torch.rand(len(y), 1, 12, 12, generator=g)
    emb = torch.randn(n_classes, 2, generator=g)[y] * 5 + 0.1 * torch.randn(len(y), 2, generator=g)
    return images, emb, y


def test_embedding_map_two_d_and_tsne(tmp_path):
    _, emb, y = data()
    p = embedding_map(emb, y, tmp_path / "map.png", max_classes=3)
    assert mpimg.imread(p).shape[2] in (3, 4)
    q = embedding_map(torch.randn(30, 5), torch.arange(30) % 3, tmp_path / "sub" / "tsne.png", tsne_iters=250,
                      max_points=20)
    assert q.exists() and q.stat().st_size > 5000
    with pytest.raises(ValueError, match="align"):
        embedding_map(emb, y[:-1], tmp_path / "bad.png")


def colour_fraction(png, hex_colour):
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    img = mpimg.imread(png)[..., :3]
    return float((np.abs(img - rgb).sum(-1) < 0.05).mean())


def test_retrieval_grid_green_for_same_class_red_otherwise(tmp_path):
    images, emb, y = data()
    clean = retrieval_grid(images, emb, y, tmp_path / "clean.png", n_queries=3, top_k=4)
    assert colour_fraction(clean, SAME) > 0.01 and colour_fraction(clean, OTHER) == 0.0
    shuffled = retrieval_grid(images, emb, y[torch.randperm(len(y))], tmp_path / "mixed.png", n_queries=3, top_k=4)
    assert colour_fraction(shuffled, OTHER) > 0.01
    with pytest.raises(ValueError, match="align"):
        retrieval_grid(images[:-1], emb, y, tmp_path / "bad.png")


def test_similarity_grid_and_curves_and_report(tmp_path):
    images, emb, y = data()
    sim = torch.exp(-torch.cdist(emb, emb))
    s = similarity_grid(images, sim, tmp_path / "sim.png", top=5, n_anchors=3, labels=y)
    assert colour_fraction(s, SAME) > 0.01
    with pytest.raises(ValueError, match=r"\[b, b\]"):
        similarity_grid(images, sim[:, :-1], tmp_path / "bad.png")
    history = [{"epoch": e, "recall@1": 0.5 + e / 10, "recall@10": 0.9, "map@r": 0.2, "loss": 1 / (e + 1)}
               for e in range(3)]
    c = metric_curves(history, tmp_path / "curves.png")
    report = write_report(tmp_path, {"test": {"recall@1": 0.7, "recall@10": 0.9, "map@r": 0.25, "nmi": 0.5,
                                              "num_lone_queries": 2}, "seconds": 3.0},
                          history, {"curves": c, "neighbours": s})
    text = report.read_text()
    assert "| final | 70.00 | 90.00 | 25.00 | 50.00 |" in text
    assert "selection on test" in text and "![curves](curves.png)" in text and "Lone queries" in text
    assert metrics_table({"a": {"nmi": 0.5, "recall@10": 0.1, "recall@2": 0.2}}).splitlines()[0] == \
        "| | recall@2 | recall@10 | nmi |"
    with pytest.raises(ValueError, match="empty"):
        metric_curves([], tmp_path / "none.png")
