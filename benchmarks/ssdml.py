"""SSDML on Fashion-MNIST (seed 002, Table 1 and Table 4): 10 labels per class, retrieval on the test split.

Rows, each through ``dmlkit.train`` except raw pixels:

- ``initial``: the untrained mnist-net + FC(500→128) + l2 (Table 1 "Initial").
- ``deep-lrml``, ``deep-seraph``, ``deep-isdml``, ``deep-apllr``, ``deep-apit``: the five deep classical
  baselines through their presets ``<name>-fashion-mnist`` (skipped with a note when not available).
- ``ssdml``: preset ``ssdml-fashion-mnist`` (γ 0.99, k 10, α 40°, partitions of 9k, 50 epochs).
- ``ssdml-no-orth``: Table 4's "w/o orth" ablation (``orthogonal=False``).
- ``raw-pixels``: l2-normalised 784-d test pixels, through ``dmlkit.evaluate``.

Every row carries ``paper_value`` (NMI, R@1, R@2, R@4, R@8 from the seed, as fractions). The SSDML rows
also write their per-epoch curve (Figure 2 left: convergence; here on Fashion-MNIST, the seed plots
Cars-196) to ``benchmarks/results/ssdml_convergence.png``. ``--alpha-sweep`` adds Figure 2 middle's
α sensitivity (35°–55°) as rows ``ssdml[alpha=A]`` and ``benchmarks/results/ssdml_alpha.png``.

Usage (from the repository root)::

    python benchmarks/ssdml.py                    # full protocol: hours per trained row on 2 CPU cores
    python benchmarks/ssdml.py --quick            # smoke run: 2 epochs on partitions of 1,500 unlabeled, 1,000 test images
    python benchmarks/ssdml.py --only ssdml --only raw-pixels
    python benchmarks/ssdml.py --only ssdml-no-orth --epochs 10   # a shortened schedule (one partition), noted in the row

Each run replaces its own rows (same method, dataset, protocol, seed) in ``benchmarks/results/ssdml.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, ROOT, markdown_table, save_rows

sys.path.insert(0, str(ROOT / "src"))

import numpy as np
import torch

import dmlkit

DATASET = "fashion-mnist"
PROTOCOL = "semi-supervised-10-per-class"
PRESET = "ssdml-fashion-mnist"
BASELINES = ("deep-lrml", "deep-seraph", "deep-isdml", "deep-apllr", "deep-apit")
ROWS = ("initial", *BASELINES, "ssdml", "ssdml-no-orth", "raw-pixels")
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r")
PAPER_KEYS = ("nmi", "recall@1", "recall@2", "recall@4", "recall@8")
# seed 002 Table 1 (Fashion-MNIST) and Table 4 (w/o orth), NMI / R@1 / R@2 / R@4 / R@8 in %
PAPER = {
    "initial": (32.6, 71.9, 82.0, 89.5, 94.8),
    "deep-lrml": (53.2, 75.3, 83.9, 90.2, 95.0),
    "deep-seraph": (53.0, 75.9, 85.1, 91.5, 95.4),
    "deep-isdml": (51.3, 74.4, 84.2, 90.7, 95.1),
    "deep-apllr": (38.9, 59.5, 73.3, 84.1, 91.4),
    "deep-apit": (37.3, 69.4, 80.1, 88.5, 94.1),
    "ssdml": (52.1, 77.6, 86.0, 91.8, 95.6),
    "ssdml-no-orth": (50.3, 73.3, 82.4, 89.7, 94.4),
}
QUICK = {"epochs": 2, "test_subset": 1000}  # the partition, not the split, sets the cost
QUICK_OPTIONS = {"n_unlabeled_partition": 1500, "epochs_per_partition": 1}
ALPHAS = (35.0, 40.0, 45.0, 50.0, 55.0)
CURVES = ("ssdml", "ssdml-no-orth")  # rows drawn in ssdml_convergence.png (Figure 2 left)


def paper_value(name: str) -> dict | None:
    values = PAPER.get(name)
    return None if values is None else {key: value / 100.0 for key, value in zip(PAPER_KEYS, values)}


def row(name: str, metrics: dict, seconds: float, notes: str, quick: bool, **extra) -> dict:
    out = {"method": name, "dataset": DATASET, "protocol": PROTOCOL, "seed": 0,
           "metrics": {k: float(metrics[k]) for k in METRICS if k in metrics}, "seconds": round(float(seconds), 2),
           "paper_value": paper_value(name.split("[")[0]), "notes": notes, **extra}
    if quick:
        out["quick"] = True
    return out


def settings_for(quick: bool, preset: str | None, epochs: int | None = None) -> dict:
    """``dmlkit.train`` settings of a row; ``epochs`` (``--epochs``) shortens the schedule, None keeps the
    preset's (the paper's 50)."""
    settings = {"protocol": "standard", "labels_per_class": 10, "seed": 0, "progress": False, "pictures": False}
    if preset:
        settings["preset"] = preset
    if quick:
        settings.update(QUICK)
    if epochs is not None:
        settings["epochs"] = epochs
    return settings


def triplet_quality(triplets: torch.Tensor, true_labels: np.ndarray) -> dict:
    """How the mined ``[T, 3]`` (anchor, positive, negative) triplets agree with the hidden classes.

    ``correct``: positive of the anchor's class and negative of another; ``inverted``: the reverse; the
    rest (both or neither of the anchor's class) carry no class signal.
    """
    y = torch.as_tensor(np.asarray(true_labels))[triplets.long()]
    positive, negative = y[:, 1] == y[:, 0], y[:, 2] == y[:, 0]
    fractions = {"positive_same_class": positive, "negative_same_class": negative,
                 "correct": positive & ~negative, "inverted": ~positive & negative}
    return {"triplets": len(triplets), **{k: round(float(v.float().mean()), 4) for k, v in fractions.items()}}


def first_partition_quality(options: dict, quick: bool) -> dict:
    """Triplet quality of partition 0 as the run mines it: same seed, same initial network, same refresh."""
    import lightning

    from dmlkit.engine.config import resolve_config
    from dmlkit.engine.run import build_method, prepare_data
    from dmlkit.evaluation.embedding import embed_dataset
    from dmlkit.methods.base import RefreshContext

    config = resolve_config({"method": "ssdml", "dataset": DATASET, **settings_for(quick, PRESET), "options": options})
    lightning.seed_everything(config.seed, verbose=False)
    data = prepare_data(config, "partial")
    method = build_method(config, data.train)
    method.refresh(RefreshContext(
        epoch=0, train=data.train, knn=None, device=torch.device("cpu"), seed=config.seed,
        embed=lambda fn, dataset=None: embed_dataset(fn, dataset or data.train, modules=(method,))))
    return triplet_quality(method.triplets, data.train.true_labels)


def last_partition_quality(run_dir: Path, options: dict, quick: bool) -> dict:
    """Triplet quality of the partition the finished run trained on last (its checkpoint holds the triplets)."""
    from dmlkit.engine.checkpoint import load_checkpoint_dict
    from dmlkit.engine.config import resolve_config
    from dmlkit.engine.run import prepare_data

    state = load_checkpoint_dict(run_dir / "checkpoints" / "last.ckpt").get("dmlkit", {}).get("method_state", {})
    config = resolve_config({"method": "ssdml", "dataset": DATASET, **settings_for(quick, PRESET), "options": options})
    return triplet_quality(state["triplets"], prepare_data(config, "partial").train.true_labels)


def run_ssdml(name: str, options: dict, quick: bool, out_root: Path, epochs: int | None = None) -> dict:
    from dmlkit.engine.config import load_preset

    merged = {**(load_preset(PRESET).get("options") or {}), **options, **(QUICK_OPTIONS if quick else {})}
    first = first_partition_quality(merged, quick)
    settings = {**settings_for(quick, PRESET, epochs), "options": merged}
    result = dmlkit.train("ssdml", DATASET, str(out_root / name), overwrite=True, **settings)
    quality = {"first_partition": first, "last_partition": last_partition_quality(out_root / name, merged, quick)}
    return row(name, result["test"], result["seconds"], f"preset {PRESET} + {options or 'paper defaults'}, "
               f"{result['config']['epochs']} epoch(s)", quick, options=options, best=result["best"],
               epochs=result["config"]["epochs"],
               triplet_quality=quality,
               history=[{k: h[k] for k in ("epoch", "recall@1", "nmi", "val_map@r") if k in h}
                        for h in result.get("history", [])])


def run_baseline(name: str, quick: bool, out_root: Path, epochs: int | None = None) -> dict | None:
    from dmlkit.engine.config import ConfigError, load_preset
    from dmlkit.methods import method_class

    try:
        method_class(name)
    except KeyError as error:
        print(f"skipping {name}: {error}")
        return None
    preset = f"{name}-{DATASET}"
    try:
        load_preset(preset)
    except ConfigError:
        preset = None
    settings = settings_for(quick, preset, epochs)
    if quick:
        settings["options"] = {"n_unlabeled_partition": QUICK_OPTIONS["n_unlabeled_partition"]}
    result = dmlkit.train(name, DATASET, str(out_root / name), overwrite=True, **settings)
    return row(name, result["test"], result["seconds"], f"preset {preset}, {result['config']['epochs']} epoch(s)", quick,
               best=result["best"], epochs=result["config"]["epochs"])


def run_initial(quick: bool, out_root: Path) -> dict:
    settings = {**settings_for(quick, None), "options": {"backbone": "mnist-net", "embedding_dim": 128}}
    settings.pop("epochs", None)
    result = dmlkit.train("initial", DATASET, str(out_root / "initial"), overwrite=True, **settings)
    return row("initial", result["test"], result["seconds"], "untrained mnist-net + FC(500→128) + l2", quick)


def run_raw_pixels(quick: bool, out_root: Path) -> dict:
    from dmlkit.engine.config import resolve_config
    from dmlkit.engine.run import prepare_data

    start = time.perf_counter()
    settings = {"method": "initial", "dataset": DATASET, "protocol": "standard", "seed": 0}
    if quick:
        settings["test_subset"] = QUICK["test_subset"]
    query = prepare_data(resolve_config(settings), "none").query
    pixels = torch.from_numpy(np.asarray(query.images, dtype=np.float32).reshape(len(query), -1) / 255.0)
    metrics = dmlkit.evaluate(torch.nn.functional.normalize(pixels, dim=1), query.true_labels,
                              recall_at=query.recall_at, seed=0)
    return row("raw-pixels", metrics, time.perf_counter() - start, "l2-normalised 784-d pixels, Euclidean kNN", quick)


def plot(rows: list[dict], path: Path, x_key: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    if x_key == "epoch":
        for r in rows:
            hist = [h for h in r.get("history", []) if "recall@1" in h]
            if hist:
                ax.plot([h["epoch"] for h in hist], [h["recall@1"] for h in hist], marker="o", label=r["method"])
        ax.set_xlabel("epoch")
    else:
        points = sorted((r["options"]["alpha_deg"], r["metrics"]["recall@1"]) for r in rows)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_xlabel("α (degrees)")
    ax.set_ylabel("test Recall@1")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def metric_getter(key: str):
    return lambda r: r["metrics"].get(key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs on partitions of 1,500 unlabeled images, 1,000 test images")
    parser.add_argument("--only", action="append", choices=ROWS, help="run only these rows (repeatable)")
    parser.add_argument("--epochs", type=int, help="shorten the trained rows to this many epochs (default: the paper's 50)")
    parser.add_argument("--alpha-sweep", action="store_true", help="Figure 2 middle: α from 35° to 55°")
    parser.add_argument("--out", default="runs/benchmarks/ssdml", help="run directories")
    args = parser.parse_args(argv)
    out_root = ROOT / args.out
    rows: list[dict] = []
    for name in args.only or ROWS:
        if name == "initial":
            rows.append(run_initial(args.quick, out_root))
        elif name == "raw-pixels":
            rows.append(run_raw_pixels(args.quick, out_root))
        elif name == "ssdml":
            rows.append(run_ssdml("ssdml", {}, args.quick, out_root, args.epochs))
        elif name == "ssdml-no-orth":
            rows.append(run_ssdml("ssdml-no-orth", {"orthogonal": False}, args.quick, out_root, args.epochs))
        else:
            result = run_baseline(name, args.quick, out_root, args.epochs)
            if result is not None:
                rows.append(result)
    if args.alpha_sweep:
        sweep = [run_ssdml(f"ssdml[alpha={a:g}]", {"alpha_deg": a}, args.quick, out_root, args.epochs)
                 for a in ALPHAS]
        rows.extend(sweep)
        plot(sweep, RESULTS_DIR / "ssdml_alpha.png", "alpha", "SSDML: sensitivity to α (Fashion-MNIST)")
    saved = save_rows("ssdml", rows)
    if any(r["method"] in CURVES for r in rows):  # every saved curve, so one row's rerun keeps the others
        plot([r for r in saved["rows"] if r["method"] in CURVES], RESULTS_DIR / "ssdml_convergence.png", "epoch",
             "SSDML convergence (Fashion-MNIST)")
    print(markdown_table(rows, ["method", *[(k, metric_getter(k)) for k in PAPER_KEYS],
                                ("paper R@1", lambda r: (r.get("paper_value") or {}).get("recall@1")),
                                "seconds"], digits=4))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
