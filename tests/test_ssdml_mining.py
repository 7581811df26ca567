"""experiments/ssdml_mining.py: the orderings and fractions behind the mining diagnostic (issue 6)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.targets.propagation import knn_graph, mine_triplets, propagate


@pytest.fixture
def mining(load_benchmark):
    return load_benchmark("ssdml_mining.py")


def _two_blobs(n_per: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]], dtype=torch.float64)
    z = torch.cat([c + 0.6 * torch.randn(n_per, 3, generator=g, dtype=torch.float64) for c in centres])
    return z, torch.arange(2).repeat_interleave(n_per)


def test_triplet_fractions_hand_computed(mining):
    true = torch.tensor([0, 0, 1, 1])
    triplets = torch.tensor([[0, 1, 2],   # correct
                             [0, 2, 1],   # inverted
                             [2, 3, 3],   # positive and negative both of the anchor's class
                             [3, 0, 1]])  # neither
    out = mining.triplet_fractions(triplets, true)
    assert out == {"positive_same_class": 0.5, "negative_same_class": 0.5, "correct": 0.25, "inverted": 0.25}


def test_paper_ordering_is_the_methods_propagation(mining):
    z, true = _two_blobs()
    labels = torch.full_like(true, -1)
    labels[[0, 1, 12, 13]] = true[[0, 1, 12, 13]]
    graph = knn_graph(z, 4)
    ours = mining.orderings(graph, labels, true, gamma=0.9)
    reference = propagate(graph, labels, 0.9, "transpose", "dense").affinity
    torch.testing.assert_close(ours["paper"], reference, rtol=0, atol=1e-10)
    # distance keeps the kNN order; oracle puts every same-class neighbour first
    assert torch.equal(mine_triplets(graph.neighbours, ours["distance"]),
                       mine_triplets(graph.neighbours, torch.zeros_like(ours["distance"])))
    oracle = mining.triplet_fractions(mine_triplets(graph.neighbours, ours["oracle"]), true)
    for name in ("paper", "two-sided", "label-propagation", "distance"):
        other = mining.triplet_fractions(mine_triplets(graph.neighbours, ours[name]), true)
        assert oracle["correct"] >= other["correct"] and oracle["inverted"] == 0.0


def test_paper_affinity_of_unlabeled_pairs_ignores_the_labels(mining):
    """With the printed W* = (1−γ)(I−γQ)⁻¹W⁰, W*_ij = B_ij for every unlabeled j: relabeling the labeled
    nodes changes no unlabeled-unlabeled affinity; the two-sided B W⁰ Bᵀ does change them."""
    z, true = _two_blobs()
    labels = torch.full_like(true, -1)
    labeled = torch.tensor([0, 1, 12, 13])
    labels[labeled] = true[labeled]
    swapped = labels.clone()
    swapped[labeled] = 1 - true[labeled]
    swapped[[0, 12]] = swapped[[12, 0]]
    graph = knn_graph(z, 4)
    a, b = mining.orderings(graph, labels, true, 0.9), mining.orderings(graph, swapped, true, 0.9)
    unlabeled_edge = (labels[:, None] < 0) & (labels[graph.neighbours] < 0)
    assert unlabeled_edge.sum() > 20
    torch.testing.assert_close(a["paper"][unlabeled_edge], b["paper"][unlabeled_edge], rtol=0, atol=1e-12)
    assert (a["two-sided"][unlabeled_edge] - b["two-sided"][unlabeled_edge]).abs().max() > 1e-4


def test_triplet_quality_by_hand(mining):
    labels = np.array([0, 0, 1, 1, 2])
    triplets = torch.tensor([
        [0, 1, 2],  # positive same, negative other: correct
        [2, 4, 3],  # positive other, negative same: inverted
        [0, 1, 1],  # both same: no signal
        [3, 0, 4],  # neither same: no signal
    ])
    quality = mining.triplet_quality(triplets, labels)
    assert quality == {"triplets": 4, "positive_same_class": 0.5, "negative_same_class": 0.5,
                       "correct": 0.25, "inverted": 0.25}


def test_triplet_quality_of_no_triplets_is_nan(mining):
    quality = mining.triplet_quality(torch.zeros(0, 3, dtype=torch.long), np.array([0, 1]))
    assert quality["triplets"] == 0 and np.isnan(quality["correct"])
