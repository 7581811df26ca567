"""Benchmark suites, declared as data (run with ``python -m benchmarks --suite NAME``).

Every suite puts the yardsticks beside the methods: raw pixels, the initial embedding (same backbone,
no training) and, where labels exist, the supervised ceiling.
"""
from __future__ import annotations

from harness import RAW_PIXELS, Entry, Suite

_FMNIST_QUICK = {"train_subset": 1200, "test_subset": 600, "epochs": 1}
#: glyphs-large: evaluating every test image (~150k+) is hours on one thread; test_subset draws a
#: class-stratified subset (seed 0 whatever the run's seed, so every row shares one test set)
_GLYPHS_LARGE = {"test_subset": 30000, "threads": 1}
_GLYPHS_LARGE_QUICK = {"test_subset": 2000, "threads": 1}
_GLYPHS_LARGE_NOTE = "30,000 test images drawn class-stratified (seed 0) from the test classes; 1 torch thread"

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
    "glyphs-large-yardsticks": Suite(
        "glyphs-large-yardsticks",
        "glyphs-large (large font list): raw pixels and the ImageNet EfficientNet-Lite0 initial embedding at 64 px "
        "on a seeded class-stratified subset of the unseen test classes",
        (
            Entry("raw-pixels", RAW_PIXELS, "glyphs-large", settings=_GLYPHS_LARGE, quick=_GLYPHS_LARGE_QUICK,
                  notes=_GLYPHS_LARGE_NOTE),
            Entry("initial", "initial", "glyphs-large", settings=_GLYPHS_LARGE, quick=_GLYPHS_LARGE_QUICK,
                  options={"backbone": "efficientnet-lite0", "pretrained": "imagenet", "input_size": 64},
                  notes=_GLYPHS_LARGE_NOTE + "; pooled 1280-d features, no head"),
        ),
    ),
}
