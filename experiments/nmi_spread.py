"""How much of an NMI number is the k-means seed (diagnostic for issue 4)?

The protocol's NMI (EVALUATION.md §3) runs k-means once (k-means++, 20 Lloyd iterations, seed 0). This
script re-clusters fixed test embeddings with several k-means seeds and reports NMI's mean, standard
deviation, minimum and maximum, for raw pixels (l2-normalised 784-d) and for the test embeddings of
finished runs, on Fashion-MNIST's test split. Rows go to ``experiments/results/nmi_spread.json``.

Usage (from the repository root; seconds per embedding)::

    python experiments/nmi_spread.py                    # raw pixels + the STML and initial runs found
    python experiments/nmi_spread.py runs/benchmarks/stml/full/stml-unsupervised-seed1 --seeds 10
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np
import torch
from _common import EXPERIMENT_RESULTS_DIR, markdown_table, save_seed_rows

DATASET = "fashion-mnist"
DEFAULT_RUNS = ("runs/benchmarks/ssdml/initial", "runs/benchmarks/stml/full/stml-unsupervised",
                "runs/benchmarks/stml/full/stml-unsupervised-seed1", "runs/benchmarks/stml/full/stml-unsupervised-seed2")


def nmi_over_seeds(embeddings: torch.Tensor, labels: np.ndarray, seeds: int, n_classes: int) -> list[float]:
    """NMI of the protocol's k-means (K = ``n_classes``) on ``embeddings`` ``[N, D]``, once per seed 0..seeds-1."""
    from dmlkit.evaluation.clustering import kmeans, nmi_score

    return [nmi_score(labels, kmeans(embeddings, n_classes, seed=seed)) for seed in range(seeds)]


def test_split() -> tuple[torch.Tensor, np.ndarray]:
    """Fashion-MNIST's test images ``[N, 1, 28, 28]`` in [0, 1] and their classes."""
    from dmlkit.data import load_records

    records = load_records(DATASET)
    test = records.splits == "test"
    images = torch.as_tensor(np.asarray(records.images)[test]).float().div(255.0)
    return (images if images.dim() == 4 else images.unsqueeze(1)), np.asarray(records.labels)[test]


@torch.no_grad()
def run_embeddings(run_dir: Path, images: torch.Tensor) -> torch.Tensor:
    """The test embedding of a finished run, as the protocol evaluates it (the method's ``embed``)."""
    from dmlkit.engine.run import load_run

    _, method, _ = load_run(run_dir)
    method.eval()
    return torch.cat([method.embed(chunk) for chunk in images.split(1000)])


def row(name: str, values: list[float], notes: str) -> dict:
    return {"method": name, "dataset": DATASET, "protocol": "test split, k-means seeds", "seed": 0,
            "nmi_over_kmeans_seeds": {"mean": statistics.mean(values), "std": statistics.stdev(values),
                                      "min": min(values), "max": max(values), "values": values},
            "notes": notes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=list(DEFAULT_RUNS), help="finished run directories")
    parser.add_argument("--seeds", type=int, default=5, help="k-means seeds per embedding (default 5)")
    args = parser.parse_args(argv)
    images, labels = test_split()
    n_classes = len(np.unique(labels))
    pixels = torch.nn.functional.normalize(images.flatten(1), dim=1)
    rows = [row("raw-pixels", nmi_over_seeds(pixels, labels, args.seeds, n_classes), "l2-normalised 784-d pixels")]
    for run in args.runs:
        path = ROOT / run
        if not (path / "checkpoints" / "last.ckpt").is_file():
            print(f"skipping {run}: no finished run there")
            continue
        values = nmi_over_seeds(run_embeddings(path, images), labels, args.seeds, n_classes)
        rows.append(row(path.name, values, f"test embeddings of {run}"))
    save_seed_rows("nmi_spread", rows, EXPERIMENT_RESULTS_DIR)
    stat = lambda key: lambda r: r["nmi_over_kmeans_seeds"][key]
    print(markdown_table(rows, ["method", *[(key, stat(key)) for key in ("mean", "std", "min", "max")]], digits=3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
