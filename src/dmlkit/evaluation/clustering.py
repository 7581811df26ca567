"""NMI of a k-means clustering (EVALUATION.md §3); the k-means itself is :mod:`dmlkit.kmeans`.

NMI = I(Ω; C) / ((H(Ω) + H(C)) / 2), the arithmetic normalisation (scikit-learn's default), computed
from the contingency table of (class, cluster) pairs without any N×N object.
"""
from __future__ import annotations

import numpy as np
import torch

from dmlkit.kmeans import kmeans

__all__ = ["kmeans", "nmi_score"]


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
