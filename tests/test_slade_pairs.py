"""experiments/slade_pairs.py: pair counts by class group on a hand-made batch (issue 7 diagnostic)."""
from __future__ import annotations

import torch


def test_pair_counts_hand_made(load_benchmark):
    pairs = load_benchmark("slade_pairs.py")
    true = torch.tensor([0, 0, 6, 6])       # two seen-class images, two unseen (seen classes: 0-4)
    pseudo = torch.tensor([0, 0, 0, 1])     # images 0, 1, 2 clustered together; 3 alone
    similarity = torch.tensor([[1.0, 0.9, 0.2, 0.1],
                               [0.9, 1.0, 0.8, 0.1],
                               [0.2, 0.8, 1.0, 0.6],
                               [0.1, 0.1, 0.6, 1.0]])
    out = pairs.pair_counts(similarity, pseudo, true, thresholds=(0.7, 0.15), seen_classes=5)
    # same-cluster pairs: (0,1) right, (0,2) wrong, (1,2) wrong; the basis keeps (0,1) and (1,2) (s ≥ 0.7)
    assert out["all/all_positives"].tolist() == [1, 3]
    assert out["all/selected_positives"].tolist() == [1, 2]
    assert out["seen/selected_positives"].tolist() == [1, 1]
    assert out["mixed/all_positives"].tolist() == [0, 2]
    assert out["mixed/selected_positives"].tolist() == [0, 1]
    # cross-cluster pairs: (0,3), (1,3) right (classes differ), (2,3) wrong; s ≤ 0.15 keeps (0,3), (1,3)
    assert out["all/all_negatives"].tolist() == [2, 3]
    assert out["all/selected_negatives"].tolist() == [2, 2]
    assert out["unseen/all_negatives"].tolist() == [0, 1]
    assert out["unseen/selected_negatives"].tolist() == [0, 0]
