"""Benchmark suites, declared as data (run with ``python -m benchmarks --suite NAME``).

Every suite puts the yardsticks beside the methods: raw pixels, the initial embedding (same backbone,
no training) and, where labels exist, the supervised ceiling.
"""
from __future__ import annotations

from dataclasses import replace

from harness import RAW_PIXELS, Entry, Suite

_FMNIST_QUICK = {"train_subset": 1200, "test_subset": 600, "epochs": 1}
#: glyphs-large: evaluating every test image (~150k+) is hours on one thread; test_subset draws a
#: class-stratified subset (seed 0 whatever the run's seed, so every row shares one test set)
_GLYPHS_LARGE = {"test_subset": 30000, "threads": 1}
_GLYPHS_LARGE_QUICK = {"test_subset": 2000, "threads": 1}
_GLYPHS_LARGE_NOTE = "30,000 test images drawn class-stratified (seed 0) from the test classes; 1 torch thread"
_GLYPHS_QUICK = {"train_subset": 480, "test_subset": 400, "epochs": 1, "eval_every": 1}
_ONE_THREAD = {"threads": 1}  # two runs share the 2 cores side by side
_GAIN_SEEDS = (0, 1, 2)
MLRC_FOLDS = 4  # the reality-check protocol's class-disjoint folds of the train classes  # rows that claim a gain over their start report mean +- std over 3 seeds


def _glyphs(row: str, preset: str, seeds: tuple[int, ...] = (0,), notes: str = "",
            settings: dict | None = None, options: dict | None = None, **quick: int) -> Entry:
    from dmlkit.engine.config import load_preset

    method = load_preset(preset)["method"]
    return Entry(row, method, "glyphs", "standard", preset=preset, seeds=seeds, settings={**_ONE_THREAD, **(settings or {})},
                 options=options or {}, quick={**_GLYPHS_QUICK, **quick}, notes=notes)


def _mlrc_folds(row: str, preset: str) -> tuple[Entry, ...]:
    """One row per MLRC fold (``<row>-fold<k>``): train on 3 of the 4 class-disjoint folds, select the epoch on the 4th."""
    return tuple(_glyphs(f"{row}-fold{fold}", preset, settings={"fold": fold},
                         notes=f"MLRC fold {fold} of 4 (75 train classes)") for fold in range(MLRC_FOLDS))


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
            *_mlrc_folds("proxyanchor", "proxyanchor-glyphs"),
            *_mlrc_folds("drml-proxyanchor", "drml-proxyanchor-glyphs"),
            _glyphs("drml-proxyanchor-fold0-nowarmup", "drml-proxyanchor-glyphs", settings={"fold": 0},
                    options={"warmup_epochs": 0},
                    notes="diagnosis: DRML-PA without the warm-up epoch (its trunk then trains the base's 4 epochs)"),
            _glyphs("proxyanchor-fold0-8epochs", "proxyanchor-glyphs", settings={"fold": 0, "epochs": 8},
                    notes="diagnosis: the MLRC pair at the table's budget (8 epochs x ~4,460 = ~35,700 images)"),
            _glyphs("drml-proxyanchor-fold0-8epochs", "drml-proxyanchor-glyphs", settings={"fold": 0, "epochs": 8},
                    notes="diagnosis: the MLRC pair at the table's budget (8 epochs x ~4,460 = ~35,700 images)"),
            *_mlrc_folds("cosface", "cosface-glyphs"),
            *_mlrc_folds("drml-cosface", "drml-cosface-glyphs"),
            _glyphs("plm-lr1e-4", "plm-glyphs", settings={"lr": 1e-4},
                    notes="diagnosis: PLM at stml-glyphs' backbone lr (the preset's 5e-4 is the paper's)"),
            _glyphs("plm-momentum0.999", "plm-glyphs", options={"momentum": 0.999},
                    notes="diagnosis: PLM with the paper's neighbour-network momentum (the preset: 0.99)"),
            _glyphs("plm-delta1", "plm-glyphs", options={"delta": 1.0},
                    notes="diagnosis: PLM with half the paper's delta (the lever on Fashion-MNIST)"),
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

# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST suites (issues 3-9, 25). Their results files (benchmarks/results/<suite>.json) were written by the
# per-method scripts these entries replace and converted to the one schema (experiments/convert_results_schema.py).

_FM = "fashion-mnist"
#: label-free rows: "unsupervised" is the standard protocol with the labels hidden
_LABEL_FREE = (("standard", "unsupervised"), ("zero-shot", None))
_LABEL_FREE_QUICK = {"epochs": 1, "train_subset": 3000, "test_subset": 1000}
_NET128 = {"backbone": "mnist-net", "embedding_dim": 128}
_STML_NOTE = "no paper number: STML reports CUB/Cars/SOP only; targets here are R@1 > raw pixels and NMI > 0.60"
_PLM_NOTE = "no paper number: PLM reports CUB/Cars/SOP only (Table 1: CUB R@1 60.6 at 128-d)"


def _yardsticks(quick: dict, protocols=_LABEL_FREE, **settings) -> tuple[Entry, ...]:
    """The untrained mnist-net + linear 128-d head and the L2-normalised pixels, on each protocol."""
    rows = []
    for protocol, label in protocols:
        rows.append(Entry("initial", "initial", _FM, protocol, label=label, options=_NET128, settings=settings,
                          quick={k: v for k, v in quick.items() if k != "epochs"},
                          notes="untrained mnist-net + linear 128-d head"))
        rows.append(Entry(RAW_PIXELS, RAW_PIXELS, _FM, protocol, label=label, settings=settings,
                          quick={"test_subset": quick["test_subset"]}, notes="L2-normalised 784-d pixels, Euclidean kNN"))
    return tuple(rows)


def _label_free(row: str, method: str, preset: str, seeds=(0, 1, 2), notes: str = "", **kwargs) -> tuple[Entry, ...]:
    return tuple(Entry(row, method, _FM, protocol, label=label, preset=preset, seeds=seeds, quick=_LABEL_FREE_QUICK,
                       notes=notes, **kwargs) for protocol, label in _LABEL_FREE)


#: PLM Figure 3 at a reduced scale (zero-shot, 12,000 training images, 2 epochs, 4 seeds): one option at a time
_PLM_SWEEP = {"n_proxies": (10, 300), "piece_dim": (2, 5), "n_alpha": (1.0, 2.0, 6.0), "delta": (0.5, 1.0)}
_PLM_SWEEP_SCALE = {"train_subset": 12000, "epochs": 2}
#: STML's unsupervised seed-1 run of the stml suite: the backbone of the [ssl-init] rows
_STML_BACKBONE = "runs/benchmarks/stml/stml-standard-seed1"

#: seed 002 Table 1 (Fashion-MNIST) and Table 4 (w/o orth): NMI, R@1, R@2, R@4, R@8 in %
_SSDML_PAPER = {"initial": (32.6, 71.9, 82.0, 89.5, 94.8), "deep-lrml": (53.2, 75.3, 83.9, 90.2, 95.0),
                "deep-seraph": (53.0, 75.9, 85.1, 91.5, 95.4), "deep-isdml": (51.3, 74.4, 84.2, 90.7, 95.1),
                "deep-apllr": (38.9, 59.5, 73.3, 84.1, 91.4), "deep-apit": (37.3, 69.4, 80.1, 88.5, 94.1),
                "ssdml": (52.1, 77.6, 86.0, 91.8, 95.6), "ssdml-no-orth": (50.3, 73.3, 82.4, 89.7, 94.4)}
_SSDML_PROTOCOL = (("standard", "semi-supervised-10-per-class"),)
_SSDML_SETTINGS = {"labels_per_class": 10}
#: --quick: partitions of 1,500 unlabeled images, 1,000 test images (the partition, not the split, sets the cost)
_SSDML_QUICK = {"epochs": 2, "test_subset": 1000, "options": {"n_unlabeled_partition": 1500}}


def _ssdml(row: str, method: str, preset: str | None, options=None, epochs: int | None = None) -> Entry:
    paper = _SSDML_PAPER.get(row)
    quick = {"test_subset": 1000} if method == "initial" else _SSDML_QUICK
    if method == "ssdml":
        quick = {**quick, "options": {**quick["options"], "epochs_per_partition": 1}}
    return Entry(row, method, _FM, "standard", label=_SSDML_PROTOCOL[0][1], preset=preset, options=options or {},
                 settings={**_SSDML_SETTINGS, **({"epochs": epochs} if epochs else {})}, quick=quick,
                 paper_value=None if paper is None else dict(zip(("nmi", "recall@1", "recall@2", "recall@4", "recall@8"),
                                                                 (v / 100 for v in paper))),
                 notes=f"preset {preset}" + (f" + {options}" if options else "") + (f", {epochs} epochs" if epochs else ""))


_DRML_SETTINGS = {"epochs": 10, "batch_size": 100, "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adamw",
                  "scheduler": "cosine"}
_DRML_BASELINE = {**_NET128, "samples_per_class": 20, "proxy_lr_multiplier": 10.0}
_DRML_NOTE = ("no paper number for Fashion-MNIST; the seed's MLRC tables (CUB, Cars) show DRML-X >= X by 0-3 points "
              "P@1 (DRML-Triplet on CUB concatenated: -0.2)")


def _drml_pair(row: str, loss: str, base_loss: str) -> tuple[Entry, Entry]:
    common = {"dataset": _FM, "protocol": "zero-shot", "seeds": (0, 1, 2), "settings": _DRML_SETTINGS,
              "quick": {"epochs": 1, "train_subset": 2000, "test_subset": 1000}}
    return (Entry(row, "supervised", options={"loss": loss, **_DRML_BASELINE}, notes=f"{loss}; {_DRML_NOTE}", **common),
            Entry(f"drml-{row}", "drml", preset="drml-fashion-mnist", options={"base_loss": base_loss},
                  notes=f"DRML over {base_loss}; {_DRML_NOTE}", **common))


SUITES.update({
    "stml": Suite("stml", "STML without labels on Fashion-MNIST, unsupervised and zero-shot, beside the untrained "
                  "network and raw pixels (3 seeds, ~25 min of training per seed and protocol on 2 cores)",
                  (*_label_free("stml", "stml", "stml-fashion-mnist", notes=f"preset stml-fashion-mnist; {_STML_NOTE}"),
                   *_yardsticks(_LABEL_FREE_QUICK))),
    "unsupervised_baselines": Suite(
        "unsupervised_baselines", "DeepCluster and instance discrimination on Fashion-MNIST (issue 9): the STML "
        "network, batch 120, 10 epochs",
        (*_label_free("deepcluster", "deepcluster", "deepcluster-fashion-mnist",
                      notes="k-means (100 clusters) every epoch, normalized softmax, classifier reset; labels never read"),
         *_label_free("instance", "instance", "instance-fashion-mnist",
                      notes="SimCLR NT-Xent (tau 0.5) on two views, in-batch negatives; labels never read"),
         *_label_free("instance-moco", "instance", "instance-fashion-mnist-moco", seeds=(0,),
                      notes="NT-Xent (tau 0.2), momentum encoder (0.99), queue of 4,096 keys; labels never read"))),
    "plm": Suite(
        "plm", "PLM without labels on Fashion-MNIST: the preset, Table 3's ablations, delta=1.0, Figure 3's sweeps "
        "at a reduced scale, from STML's backbone, and the yardsticks",
        (*_label_free("plm", "plm", "plm-fashion-mnist", notes=f"preset plm-fashion-mnist; {_PLM_NOTE}"),
         *_label_free("plm-no-selection", "plm", "plm-fashion-mnist", seeds=(0,), options={"selection": False},
                      notes="Table 3 ablation (1): pieces over all k neighbours"),
         *_label_free("plm-binary", "plm", "plm-fashion-mnist", seeds=(0,), options={"similarity": "binary"},
                      notes="Table 3 ablation (2): binary neighbourhood similarity"),
         *_label_free("plm[delta=1.0]", "plm", "plm-fashion-mnist", seeds=(0,), options={"delta": 1.0}),
         *_label_free("stml", "stml", "stml-fashion-mnist", seeds=(0,)),
         *_yardsticks(_LABEL_FREE_QUICK),
         *(Entry(name, "plm", _FM, "zero-shot", preset="plm-fashion-mnist", seeds=(0, 1, 2, 3), options=options,
                 settings=_PLM_SWEEP_SCALE, quick=_LABEL_FREE_QUICK, notes=f"Figure 3 sweep at {_PLM_SWEEP_SCALE}")
           for name, options in [("plm-sweep", {})] + [(f"plm-sweep[{k}={v}]", {k: v})
                                                         for k, values in _PLM_SWEEP.items() for v in values]),
         *(Entry(name, "plm", _FM, "standard", label="unsupervised", preset="plm-fashion-mnist", options=options,
                 init_from=_STML_BACKBONE, quick=_LABEL_FREE_QUICK, notes="backbone of STML's unsupervised seed-1 run")
           for name, options in (("plm[ssl-init]", {}), ("plm[delta=1.0][ssl-init]", {"delta": 1.0}))))),
    "ssdml": Suite(
        "ssdml", "SSDML with 10 labels per class on Fashion-MNIST (seed 002 Table 1, Table 4, Figure 2 middle), "
        "beside the five deep classical baselines: hours per trained row on 2 cores",
        (_ssdml("initial", "initial", None, _NET128), _ssdml("ssdml", "ssdml", "ssdml-fashion-mnist"),
         *(_ssdml(name, name, f"{name}-fashion-mnist")
           for name in ("deep-lrml", "deep-seraph", "deep-isdml", "deep-apllr", "deep-apit")),
         _ssdml("ssdml-no-orth", "ssdml", "ssdml-fashion-mnist", {"orthogonal": False}, epochs=20),
         *(_ssdml(f"ssdml[alpha={a:g}]", "ssdml", "ssdml-fashion-mnist", {"alpha_deg": a}, epochs=5)
           for a in (35.0, 40.0, 45.0, 50.0, 55.0)),
         Entry(RAW_PIXELS, RAW_PIXELS, _FM, "standard", label=_SSDML_PROTOCOL[0][1], quick={"test_subset": 1000},
               notes="l2-normalised 784-d pixels, Euclidean kNN"))),
    "drml": Suite(
        "drml", "DRML over triplet, Proxy-Anchor and CosFace against the plain losses on Fashion-MNIST zero-shot "
        "(3 seeds, one schedule for every row; the drml-* rows of drml.json predate issue 25's official defaults)",
        (*_drml_pair("triplet", "TripletMarginLoss", "triplet"), *_drml_pair("proxyanchor", "ProxyAnchorLoss", "proxy_anchor"),
         *_drml_pair("cosface", "CosFaceLoss", "cosface"))),
})
SUITES["stml_official"] = Suite(
    "stml_official", "issue 25: STML re-run with the official training defaults (now dmlkit's: queries drawn anew per "
    "batch), seed 0; the stml suite's rows are the comparison",
    tuple(replace(e, seeds=(0,)) for e in SUITES["stml"].entries if e.method == "stml"))
SUITES["drml_official"] = Suite(
    "drml_official", "issue 25: the DRML rows re-run with the official training defaults (now dmlkit's), seeds 0-1; "
    "the drml suite's plain-loss rows are the comparison",
    tuple(replace(e, seeds=(0, 1)) for e in SUITES["drml"].entries if e.method == "drml"))
