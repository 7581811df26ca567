"""Benchmark suites, declared as data (run with ``python -m benchmarks --suite NAME``).

Every suite puts the yardsticks beside the methods: raw pixels, the initial embedding (same backbone,
no training) and, where labels exist, the supervised ceiling.
"""
from __future__ import annotations

from harness import RAW_PIXELS, Entry, Suite

_FMNIST_QUICK = {"train_subset": 1200, "test_subset": 600, "epochs": 1}

SUITES: dict[str, Suite] = {
    "fashion-mnist-yardsticks": Suite(
        "fashion-mnist-yardsticks",
        "Fashion-MNIST: raw pixels and the untrained mnist-net (128-d head), both protocols",
        (
            Entry("raw-pixels", RAW_PIXELS, "fashion-mnist", "standard", quick=_FMNIST_QUICK),
            Entry("raw-pixels", RAW_PIXELS, "fashion-mnist", "zero-shot", quick=_FMNIST_QUICK),
            Entry("initial", "initial", "fashion-mnist", "standard", options={"backbone": "mnist-net"},
                  quick=_FMNIST_QUICK),
            Entry("initial", "initial", "fashion-mnist", "zero-shot", options={"backbone": "mnist-net"},
                  quick=_FMNIST_QUICK),
        ),
    ),
}
