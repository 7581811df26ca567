"""experiments/nmi_spread.py: NMI over k-means seeds (issue 4 diagnostic)."""
from __future__ import annotations

import numpy as np
import torch


def test_nmi_over_seeds_separated_and_overlapping(load_benchmark):
    spread = load_benchmark("nmi_spread.py")
    g = torch.Generator().manual_seed(0)
    labels = np.repeat(np.arange(3), 40)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    separated = centres[labels] + 0.1 * torch.randn(120, 2, generator=g)
    assert spread.nmi_over_seeds(separated, labels, 4, 3) == [1.0] * 4
    overlapping = centres[labels] / 10 + torch.randn(120, 2, generator=g)
    values = spread.nmi_over_seeds(overlapping, labels, 6, 3)
    assert all(0.0 <= v < 1.0 for v in values) and len(set(np.round(values, 6))) > 1  # the seed matters
    out = spread.row("x", values, "")["nmi_over_kmeans_seeds"]
    assert out["min"] <= out["mean"] <= out["max"] and out["std"] > 0 and out["values"] == values
