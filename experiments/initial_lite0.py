"""How good a yardstick is the untrained (ImageNet-pretrained) EfficientNet-Lite0 on Fashion-MNIST's test split (issue 20)?

The ``initial`` yardstick with EfficientNet-Lite0 on Fashion-MNIST's test split (issue 20).

Rows (``experiments/results/initial_lite0.json``), each on all 10 classes and on the zero-shot classes 5–9:
the pretrained Lite0's pooled 1280-d features (as the ``initial`` method reports them: no head) at 32, 64
and 96 px with TF-style input, the same at 64 px with ImageNet mean/std input (the normalisation check),
the randomly initialised Lite0 (eval-mode BN, seed 0) at 64 px, and raw pixels (784-d). Plus one speed
row: forward + backward at 64 px, batch 64, dmlkit's backbone (28-px grey in: resize, normalise, trunk,
pool) against the same trunk fed ready 64-px RGB, timed side by side (alternating, median of the reps).

Usage (from the repository root)::

    python experiments/initial_lite0.py                 # full test split (10,000 images), ≈ 20 min on 1 busy core
    python experiments/initial_lite0.py --limit 2000    # a fixed seeded subset
    python experiments/initial_lite0.py --only speed --only "initial[pixels]"   # some rows (saved row by row)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np
import torch
from _common import EXPERIMENT_RESULTS_DIR, markdown_table, save_seed_rows

DATASET = "fashion-mnist"
#: (row name, backbone, pretrained, input size, input norm)
EMBEDDINGS = (
    ("initial[efficientnet-lite0@64]", "efficientnet-lite0", "imagenet", 64, None),
    ("initial[efficientnet-lite0@32]", "efficientnet-lite0", "imagenet", 32, None),
    ("initial[efficientnet-lite0@96]", "efficientnet-lite0", "imagenet", 96, None),
    ("initial[efficientnet-lite0@64,imagenet-norm]", "efficientnet-lite0", "imagenet", 64, "imagenet"),
    ("initial[efficientnet-lite0@64,random-init]", "efficientnet-lite0", None, 64, None),
    ("initial[pixels]", "pixels", None, None, None),
)


def test_split(limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST test images ``[N, 1, 28, 28]`` in [0, 1] and labels; a fixed seeded subset if ``limit``."""
    from dmlkit.data.registry import load_records

    records = load_records(DATASET)
    index = np.flatnonzero(records.splits == "test")
    if limit:
        index = np.sort(np.random.default_rng(0).choice(index, limit, replace=False))
    return torch.from_numpy(records.images[index]).float() / 255.0, torch.from_numpy(records.labels[index])


def embed(images: torch.Tensor, name: str, pretrained: str | None, size: int | None, norm: str | None) -> torch.Tensor:
    """Features of the ``initial`` method (backbone, no head) for ``images``."""
    from dmlkit.methods.base import BuildInfo
    from dmlkit.methods.reference import InitialConfig, InitialMethod

    torch.manual_seed(0)
    config = InitialConfig(backbone=name, pretrained=pretrained, input_size=size)
    method = InitialMethod(config, BuildInfo(1, 28, 0, 0, DATASET, "grey28")).eval()
    if norm is not None:
        method.backbone = build_with_norm(name, pretrained, size, norm)
    with torch.no_grad():
        return torch.cat([method.embed(images[i:i + 500]) for i in range(0, len(images), 500)])


def build_with_norm(name: str, pretrained: str | None, size: int | None, norm: str) -> torch.nn.Module:
    from dmlkit.models import build_backbone

    return build_backbone(name, 1, 28, pretrained, input_norm=norm, input_size=size).eval()


def metric_rows(method: str, features: torch.Tensor, labels: torch.Tensor, seconds: float, notes: str) -> list[dict]:
    from dmlkit.evaluation.metrics import evaluate

    rows = []
    for protocol, mask in (("test-all-classes", torch.ones_like(labels, dtype=torch.bool)),
                           ("test-classes-5-9", labels >= 5)):
        metrics = evaluate(features[mask], labels[mask])
        metrics.pop("num_lone_queries", None)
        rows.append({"method": method, "dataset": DATASET, "protocol": protocol, "seed": 0, "metrics": metrics,
                     "seconds": round(seconds, 1), "images": int(mask.sum()), "dim": features.shape[1],
                     "notes": notes})
    return rows


def speed_row(reps: int, batch: int = 64) -> dict:
    """Forward + backward at 64 px: dmlkit's backbone vs the bare trunk, alternating, median seconds per batch."""
    from dmlkit.models import build_backbone

    wrapped = build_backbone("efficientnet-lite0", 1, 28, "imagenet").train()
    bare = wrapped.trunk  # the same network (frozen BN, the pretrained default) without the wrapper
    grey = torch.rand(batch, 1, 28, 28)
    rgb = torch.rand(batch, 3, 64, 64) * 2 - 1
    times = {"dmlkit": [], "bare": []}

    def step(kind: str) -> None:
        start = time.perf_counter()
        out = wrapped(grey) if kind == "dmlkit" else bare(rgb).mean(dim=(2, 3))
        out.pow(2).sum().backward()
        times[kind].append(time.perf_counter() - start)

    step("dmlkit"), step("bare")  # warm-up
    times = {"dmlkit": [], "bare": []}
    for _ in range(reps):
        step("dmlkit")
        step("bare")
    ours, theirs = statistics.median(times["dmlkit"]), statistics.median(times["bare"])
    return {"method": "speed[efficientnet-lite0@64,forward+backward]", "dataset": "random", "protocol": "speed",
            "seed": 0, "metrics": {"time_ratio": round(ours / theirs, 4)},
            "images_per_second": round(batch / ours, 1), "bare_images_per_second": round(batch / theirs, 1),
            "seconds": round(sum(times["dmlkit"]) + sum(times["bare"]), 1),
            "notes": f"batch {batch}, median of {reps} alternating reps; time_ratio = dmlkit backbone (28-px grey in) / "
                     "the same trunk fed ready 64-px RGB; frozen BN (the pretrained default) in both"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="a fixed seeded subset of the test split")
    parser.add_argument("--reps", type=int, default=7, help="alternating speed repetitions")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", action="append", help="run only these rows (repeatable; 'speed' for the speed row)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = test_split(args.limit)
    rows = []
    if not args.only or "speed" in args.only:
        rows.append(speed_row(args.reps))
        save_seed_rows("initial_lite0", rows[-1:], EXPERIMENT_RESULTS_DIR)
        print(rows[-1], flush=True)
    for method, name, pretrained, size, norm in EMBEDDINGS:
        if args.only and method not in args.only:
            continue
        start = time.perf_counter()
        features = embed(images, name, pretrained, size, norm)
        seconds = time.perf_counter() - start
        notes = f"{len(images)} test images{' (seeded subset)' if args.limit else ''}, Euclidean, no head"
        rows += metric_rows(method, features, labels, seconds, notes)
        save_seed_rows("initial_lite0", rows[-2:], EXPERIMENT_RESULTS_DIR)
        print(method, [round(r["metrics"]["recall@1"], 4) for r in rows[-2:]], f"{seconds:.0f}s", flush=True)
    print(markdown_table([r for r in rows if r["protocol"] != "speed"],
                         ["method", "protocol", ("R@1", lambda r: r["metrics"]["recall@1"]),
                          ("NMI", lambda r: r["metrics"]["nmi"]), ("MAP@R", lambda r: r["metrics"]["map@r"]),
                          "seconds"]))


if __name__ == "__main__":
    main()
