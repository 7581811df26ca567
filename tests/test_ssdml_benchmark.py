"""benchmarks/ssdml.py: the triplet-quality diagnostic written into the SSDML rows."""
import numpy as np
import torch


def test_triplet_quality_by_hand(load_benchmark):
    bench = load_benchmark("ssdml.py")
    labels = np.array([0, 0, 1, 1, 2])
    triplets = torch.tensor([
        [0, 1, 2],  # positive same, negative other: correct
        [2, 4, 3],  # positive other, negative same: inverted
        [0, 1, 1],  # both same: no signal
        [3, 0, 4],  # neither same: no signal
    ])
    quality = bench.triplet_quality(triplets, labels)
    assert quality == {"triplets": 4, "positive_same_class": 0.5, "negative_same_class": 0.5,
                       "correct": 0.25, "inverted": 0.25}


def test_triplet_quality_of_no_triplets_is_nan(load_benchmark):
    bench = load_benchmark("ssdml.py")
    quality = bench.triplet_quality(torch.zeros(0, 3, dtype=torch.long), np.array([0, 1]))
    assert quality["triplets"] == 0 and np.isnan(quality["correct"])
