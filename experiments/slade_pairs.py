"""How well does SLADE's basis selection pick right pseudo-labeled pairs (diagnostic for issue 7)?

For finished runs of ``experiments/slade.py`` (the student of the last round, its basis, momentum
Gaussians and pseudo labels), draw pool batches as the student sees them (8 pseudo-clusters x 4
images, seed 0) and count, against the hidden classes:

- positives: every same-cluster pair (``all``) and the pairs the basis keeps (``s ≥ μ⁺``, ``selected``),
  with the share of them whose two images share a class (precision);
- negatives: every cross-cluster pair and the pairs the spec's default selection keeps (``s ≤ μ⁻``), with
  the share whose images differ in class;

overall and split by where the pair's true classes lie: both in the labeled classes 0-4 (``seen``),
both in 5-9 (``unseen``, the test classes) or one in each (``mixed``); and, over the same-cluster pairs, the
Pearson correlation of the basis similarity with the embeddings' cosine similarity (high: the selection
drops the positives the embedding already finds hard). Rows (one per run) go to
``experiments/results/slade_pairs.json``.

Usage (from the repository root, after ``experiments/slade.py``; about a minute per run)::

    python experiments/slade_pairs.py                          # the slade runs of seeds 0-2, both inits
    python experiments/slade_pairs.py runs/benchmarks/slade/full/slade
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np
import torch
import torch.nn.functional as F
from _common import EXPERIMENT_RESULTS_DIR, markdown_table, save_seed_rows

GROUPS = ("all", "seen", "unseen", "mixed")
DEFAULT_RUNS = tuple(f"runs/benchmarks/slade/full/slade{init}{seed}" for init in ("", "[ssl-init]")
                     for seed in ("", "-seed1", "-seed2"))


def pair_counts(similarity: torch.Tensor, pseudo: torch.Tensor, true: torch.Tensor, thresholds: tuple[float, float],
                seen_classes: int) -> dict[str, np.ndarray]:
    """Per group of ``GROUPS``: ``[right, total]`` counts of all / selected positives and negatives in one batch."""
    from dmlkit.losses.basis import all_pairs, select_pairs

    same_class = true[:, None] == true[None, :]
    seen = true < seen_classes
    masks = {"all": torch.ones_like(same_class), "seen": seen[:, None] & seen[None, :],
             "unseen": ~seen[:, None] & ~seen[None, :]}
    masks["mixed"] = ~(masks["seen"] | masks["unseen"])
    all_pos, all_neg = all_pairs(pseudo)
    sel_pos, sel_neg = select_pairs(similarity, pseudo, *thresholds)
    out = {}
    for group, mask in masks.items():
        for name, pairs, right in (("all_positives", all_pos, same_class), ("selected_positives", sel_pos, same_class),
                                   ("all_negatives", all_neg, ~same_class), ("selected_negatives", sel_neg, ~same_class)):
            chosen = pairs & mask
            out[f"{group}/{name}"] = np.array([int((chosen & right).sum()), int(chosen.sum())])
    return out


@torch.no_grad()
def measure(run_dir: Path, batches: int = 150, per_cluster: int = 4, clusters_per_batch: int = 8) -> dict:
    """Precision and pairs per batch of each (group, pair kind) for the finished SLADE run in ``run_dir``."""
    from dmlkit.data import load_records
    from dmlkit.engine.run import load_run

    # experiments/slade.py's dataset keeps every Fashion-MNIST training image, in order: the run's pool indices
    records = load_records("fashion-mnist")
    train = records.splits == "train"
    true = torch.as_tensor(records.labels[train])
    images = np.asarray(records.images)[train]
    config, method, _ = load_run(run_dir)
    method.eval()
    pseudo = method.pseudo_labels.clone()
    pool = torch.nonzero(pseudo >= 0).squeeze(1)
    thresholds = method.gaussians.thresholds(method.config.kappa)
    generator = torch.Generator().manual_seed(0)
    totals: dict[str, np.ndarray] = {}
    basis_values, cosine_values = [], []
    for _ in range(batches):
        clusters = torch.randperm(int(pseudo.max()) + 1, generator=generator)[:clusters_per_batch]
        index = torch.cat([members[torch.randperm(len(members), generator=generator)[:per_cluster]]
                           for members in (pool[pseudo[pool] == c] for c in clusters)])
        x = torch.as_tensor(images[index.numpy()]).float().div(255.0)
        x = x if x.dim() == 4 else x.unsqueeze(1)
        embeddings = method.embed(x)
        similarity = method.basis.similarity(embeddings)
        same_cluster = torch.triu(pseudo[index][:, None] == pseudo[index][None, :], diagonal=1)
        basis_values.append(similarity[same_cluster])
        cosine_values.append((F.normalize(embeddings, dim=1) @ F.normalize(embeddings, dim=1).T)[same_cluster])
        for key, value in pair_counts(similarity, pseudo[index], true[index], thresholds, len(np.unique(true)) // 2).items():
            totals[key] = totals.get(key, 0) + value
    metrics = {}
    for key, (right, total) in totals.items():
        metrics[f"{key}/precision"] = float(right / total) if total else float("nan")
        metrics[f"{key}/per_batch"] = float(total / batches)
    correlation = np.corrcoef(torch.cat(basis_values).numpy(), torch.cat(cosine_values).numpy())[0, 1]
    return {"dataset": config.dataset, "thresholds": [round(float(t), 4) for t in thresholds], "pair_metrics": metrics,
            "positives_basis_vs_embedding_correlation": round(float(correlation), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=list(DEFAULT_RUNS), help="finished slade run directories")
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        path = ROOT / run
        if not (path / "checkpoints" / "last.ckpt").is_file():
            print(f"skipping {run}: no finished run there (run experiments/slade.py first)")
            continue
        rows.append({"method": path.name, "protocol": "pool pairs", "seed": 0, **measure(path), "notes": "last round's student, basis, Gaussians and pseudo labels; "
                     "150 pool batches of 8 clusters x 4"})
    if rows:
        save_seed_rows("slade_pairs", rows, EXPERIMENT_RESULTS_DIR)
        columns = ["method", *[(f"{g} {kind}", lambda r, key=f"{g}/{kind}/precision": r["pair_metrics"][key])
                               for g in ("all", "unseen") for kind in ("all_positives", "selected_positives",
                                                                       "all_negatives", "selected_negatives")]]
        print(markdown_table(rows, columns, digits=3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
