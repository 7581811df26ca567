"""Benchmark suites, declared as data (run with ``python -m benchmarks --suite NAME``).

Every suite puts the yardsticks beside the methods: raw pixels, the initial embedding (same backbone,
no training) and, where labels exist, the supervised ceiling.
"""
from __future__ import annotations

from harness import RAW_PIXELS, Entry, Suite

_FMNIST_QUICK = {"train_subset": 1200, "test_subset": 600, "epochs": 1}
_GLYPHS_QUICK = {"train_subset": 480, "test_subset": 400, "epochs": 1, "eval_every": 1}
_ONE_THREAD = {"threads": 1}  # two runs share the 2 cores side by side
_GAIN_SEEDS = (0, 1, 2)  # rows that claim a gain over their start report mean +- std over 3 seeds


def _glyphs(row: str, preset: str, seeds: tuple[int, ...] = (0,), notes: str = "",
            settings: dict | None = None, options: dict | None = None, **quick: int) -> Entry:
    from dmlkit.engine.config import load_preset

    method = load_preset(preset)["method"]
    return Entry(row, method, "glyphs", "standard", preset=preset, seeds=seeds, settings={**_ONE_THREAD, **(settings or {})},
                 options=options or {}, quick={**_GLYPHS_QUICK, **quick}, notes=notes)


SUITES: dict[str, Suite] = {
    "glyphs": Suite(
        "glyphs",
        "glyphs (100 train / 100 unseen test classes, 64 px): every method from the ImageNet Lite0 start, "
        "beside its start, raw pixels and the alternatives a user would pick",
        (
            Entry("raw-pixels", RAW_PIXELS, "glyphs", "standard", quick=_GLYPHS_QUICK),
            _glyphs("initial", "initial-glyphs", notes="ImageNet Lite0 pooled 1,280-d features, no training"),
            _glyphs("supervised", "supervised-glyphs", notes="all train-class labels: the ceiling"),
            _glyphs("stml", "stml-glyphs", _GAIN_SEEDS),
            _glyphs("plm", "plm-glyphs", _GAIN_SEEDS),
            _glyphs("instance", "instance-glyphs"),
            _glyphs("instance-moco", "instance-glyphs-moco"),
            _glyphs("deepcluster", "deepcluster-glyphs", train_subset=1200),  # 1,000 clusters need >= 1,000 images
            _glyphs("supervised-5labels", "supervised-glyphs-5labels", notes="5 labels per train class alone"),
            _glyphs("ssdml", "ssdml-glyphs", notes="5 labels per train class + the unlabeled rest"),
            _glyphs("ssdml-hinge", "ssdml-glyphs", options={"loss_form": "hinge"},
                    notes="repair option: Eq. 3's softplus replaced by the hinge of the original angular loss"),
            _glyphs("deep-lrml", "deep-lrml-glyphs", notes="5 labels per train class + the unlabeled rest"),
            _glyphs("deep-isdml", "deep-isdml-glyphs", notes="5 labels per train class + the unlabeled rest"),
            _glyphs("slade", "slade-glyphs", notes="teacher on 5 labels per train class, student on the pool"),
            _glyphs("proxyanchor-fold0", "proxyanchor-glyphs", notes="MLRC fold 0 of 4 (75 train classes)"),
            _glyphs("drml-proxyanchor-fold0", "drml-proxyanchor-glyphs", notes="MLRC fold 0 of 4 (75 train classes)"),
            _glyphs("cosface-fold0", "cosface-glyphs", notes="MLRC fold 0 of 4 (75 train classes)"),
            _glyphs("drml-cosface-fold0", "drml-cosface-glyphs", notes="MLRC fold 0 of 4 (75 train classes)"),
            _glyphs("plm-lr1e-4", "plm-glyphs", settings={"lr": 1e-4},
                    notes="diagnosis: PLM at stml-glyphs' backbone lr (the preset's 5e-4 is the paper's)"),
            _glyphs("stml-512", "stml-glyphs-512"),
            _glyphs("plm-512", "plm-glyphs-512"),
        ),
    ),
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
