"""How much class signal can SSDML's triplet mining carry on Fashion-MNIST (diagnostic for issue 6)?

SSDML (seed 002) sorts each anchor's k-neighbourhood by the propagated affinity and pairs the first
half (positives) with the second half (negatives). This script mines the first partition of the
benchmark's protocol (all 100 labeled images + 9,000 unlabeled, seed 0) and measures the triplets
against the hidden classes, for several neighbourhood sizes k, two feature extractors and five
orderings of the neighbourhood:

- ``paper``: ``W = (W* + W*ᵀ)/2`` with ``W* = (1−γ)(I−γQ)⁻¹W⁰`` (the method, dense solver).
- ``two-sided``: ``B W⁰ Bᵀ`` with ``B = (1−γ)(I−γQ)⁻¹``: the labeled pairs propagated along both
  indices, so that unlabeled pairs get label information too (not the paper's formula: with the
  printed one, ``W*_ij = B_ij`` for every unlabeled j, whatever the labels).
- ``label-propagation``: cosine of the class-score rows ``H = B Ỹ`` (pure label propagation).
- ``distance``: the kNN order itself (no propagation).
- ``oracle``: same true class first (ties by distance): the best any ordering of the k-neighbourhood
  can do.

Features: ``untrained`` (the SSDML network at initialisation, as the method starts) and, with
``--features RUN``, the backbone of a finished run (e.g. STML without labels) under the same head.

Columns (fractions of triplets): the positive / the negative shares the anchor's class; ``correct``
(positive same, negative other) and ``inverted`` (the reverse). Rows go to
``experiments/results/ssdml_mining.json``.

Usage (from the repository root; about 2 minutes per (features, k) on one core)::

    python experiments/ssdml_mining.py
    python experiments/ssdml_mining.py --features runs/benchmarks/stml/full/stml-unsupervised-seed1 --k 10 50
    python experiments/ssdml_mining.py --quick      # partition of 1,500 unlabeled, k = 10
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import EXPERIMENT_RESULTS_DIR, ROOT, backbone_weights_of_run, markdown_table, save_seed_rows

sys.path.insert(0, str(ROOT / "src"))

import numpy as np
import torch

DATASET = "fashion-mnist"
PRESET = "ssdml-fashion-mnist"
ORDERINGS = ("paper", "two-sided", "label-propagation", "distance", "oracle")
KS = (10, 20, 50, 100)
QUICK_OPTIONS = {"n_unlabeled_partition": 1500}


def triplet_quality(triplets: torch.Tensor, true_labels: np.ndarray) -> dict:
    """How the mined ``[T, 3]`` (anchor, positive, negative) triplets agree with the hidden classes
    (:func:`dmlkit.evaluation.quality.triplet_fractions`, the fractions ``dmlkit quality`` reports).

    ``correct``: positive of the anchor's class and negative of another; ``inverted``: the reverse; the
    rest (both or neither of the anchor's class) carry no class signal.
    """
    from dmlkit.evaluation.quality import triplet_fractions

    fractions = triplet_fractions(triplets, np.asarray(true_labels))
    return {"triplets": len(triplets), **{k: round(v, 4) for k, v in fractions.items()}}


def triplet_fractions(triplets: torch.Tensor, true_labels: torch.Tensor) -> dict[str, float]:
    """The four fractions of ``ssdml.triplet_quality`` (without its triplet count)."""
    quality = triplet_quality(triplets, np.asarray(true_labels))
    return {key: value for key, value in quality.items() if key != "triplets"}


def orderings(graph, labels: torch.Tensor, true_labels: torch.Tensor, gamma: float) -> dict[str, torch.Tensor]:
    """``[n, k]`` affinities of each anchor to its neighbours under every ordering of ``ORDERINGS``.

    ``labels``: the partition's labels (−1 unlabeled), ``true_labels``: the hidden classes (oracle only).
    Dense: one ``n × n`` inverse, fine at the paper's 9,100 nodes.
    """
    from dmlkit.targets.propagation import initial_affinity, symmetrize

    n, k = graph.neighbours.shape
    neighbours = graph.neighbours
    inverse = torch.linalg.inv(torch.eye(n, dtype=torch.float64) - gamma * torch.as_tensor(graph.Q.toarray()))
    propagator = (1.0 - gamma) * inverse  # B, row-stochastic
    w0 = initial_affinity(labels).double()
    labeled = labels >= 0
    one_hot = torch.zeros(n, int(labels.max()) + 1, dtype=torch.float64)
    one_hot[labeled.nonzero().squeeze(1), labels[labeled]] = 1.0
    scores = torch.nn.functional.normalize(propagator @ one_hot, dim=1)
    same = true_labels[:, None] == true_labels[neighbours]
    return {
        "paper": symmetrize(propagator @ w0).gather(1, neighbours),
        "two-sided": (propagator @ w0 @ propagator.T).gather(1, neighbours),
        "label-propagation": (scores[:, None, :] * scores[neighbours]).sum(-1),
        "distance": -torch.arange(k, dtype=torch.float64).expand(n, k),
        "oracle": same.double(),
    }


def partition_features(features_run: str | None, quick: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """``z`` of the first partition (l2-normalised, before L), its labels, its hidden classes, a name."""
    from dmlkit.engine.config import load_preset, resolve_config
    from dmlkit.engine.run import build_method, prepare_data
    from dmlkit.evaluation.embedding import embed_dataset

    options = {**(load_preset(PRESET).get("options") or {}), **(QUICK_OPTIONS if quick else {})}
    name = "untrained"
    if features_run:
        weights = ROOT / "runs" / "benchmarks" / "ssdml_mining" / "features-backbone.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        options["pretrained"] = str(backbone_weights_of_run(Path(features_run), weights))
        name = f"backbone of {Path(features_run).name}"
    config = resolve_config({"method": "ssdml", "dataset": DATASET, "protocol": "standard", "labels_per_class": 10,
                             "seed": 0, "options": options})
    torch.manual_seed(config.seed)
    data = prepare_data(config, "partial")
    method = build_method(config, data.train)
    method.eval()
    labels = np.asarray(data.train.labels)
    nodes = method.partition_nodes(labels, config.seed)
    z = embed_dataset(method.features, data.train.subset(nodes), modules=(method,))
    return z.double(), torch.as_tensor(labels[nodes]), torch.as_tensor(np.asarray(data.train.true_labels)[nodes]), name


def main(argv: list[str] | None = None) -> int:
    from dmlkit.targets.propagation import knn_graph, mine_triplets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", help="a finished run whose backbone gives the features (default: untrained)")
    parser.add_argument("--k", type=int, nargs="+", default=list(KS), help="neighbourhood sizes (even)")
    parser.add_argument("--quick", action="store_true", help="a partition of 1,500 unlabeled images, k = 10 only")
    args = parser.parse_args(argv)
    ks = [10] if args.quick else args.k
    z, labels, true_labels, features = partition_features(args.features, args.quick)
    rows = []
    for k in ks:
        start = time.perf_counter()
        graph = knn_graph(z, k)
        for ordering, affinity in orderings(graph, labels, true_labels, gamma=0.99).items():
            fractions = triplet_fractions(mine_triplets(graph.neighbours, affinity), true_labels)
            row = {"method": ordering, "dataset": DATASET, "protocol": f"{features}, k={k}", "seed": 0,
                   "metrics": fractions, "seconds": round(time.perf_counter() - start, 2), "nodes": len(labels),
                   "notes": f"first partition of preset {PRESET} (seed 0), γ = 0.99; fractions of the mined triplets"}
            if args.quick:
                row["quick"] = True
            rows.append(row)
    save_seed_rows("ssdml_mining", rows, EXPERIMENT_RESULTS_DIR)
    print(markdown_table(rows, ["protocol", "method", *[(key, lambda r, key=key: r["metrics"][key])
                                                         for key in rows[0]["metrics"]]], digits=3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
