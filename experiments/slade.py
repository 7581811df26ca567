"""Does SLADE's student beat its teacher on Fashion-MNIST when the unlabeled pool holds unseen classes (a small
stand-in for CUB + NABirds)?

Data arrangement (``pool_records``; no standard protocol gives it):

- labeled set: ``LABELED_PER_CLASS`` training images of each of classes 0-4, with their labels;
- unlabeled pool: every other training image (all ten classes), without labels;
- test: the test images of classes 5-9 (zero-shot retrieval, R@1/2/4/8, NMI, ...).

The arrangement is registered as the dataset ``fashion-mnist-slade`` for the runs of this script only
(``dmlkit.train`` reads datasets by name; ``register`` calls ``dmlkit.register_dataset``).

Rows (seed 0; ``--seeds`` adds others, the README shows mean ± std), all from scratch with the same
backbone (``mnist-net``), 128-d L2-normalised embedding, Multi-Similarity loss (α 2, β 50, λ 0.5, miner ε 0.1), labeled batches of 5 classes x 6, AdamW at lr 1e-3,
weight decay 1e-4, constant learning rate, K = 10 clusters (twice the labeled classes: the pool holds
five more), confident positives with every cross-cluster negative (``pair_selection="positives"``); each
round's student starts from its teacher's weights
(``student_init="teacher"``: with no SSL weights, the spec's default start would be a random network):

- ``slade-teacher``, ``slade-round-1``, ``slade-round-2``, ``slade``: one SLADE run (2 rounds), read at the
  end of the teacher stage, of each round, and at the end (= the last round);
- ``slade-all-pairs``: SLADE with one round and every pseudo-labeled pair in the unlabeled ranking term
  (no basis selection), starting from the slade run's ``stage-teacher.pt`` when it exists (the very same
  teacher and pseudo labels; else it trains its own, which is the same teacher: runs are seeded);
  compare with ``slade-round-1``;
- ``slade-no-basis``: the same one-round ablation with ``lambda2 = 0`` (no basis loss: the basis keeps its
  random initialisation and only sets the selection thresholds);
- ``slade-select-both``: the same one-round ablation with the spec's default selection, which also filters
  the negatives (only cross-cluster pairs with ``s <= mu-`` stay);
- ``supervised``: the same loss on the labeled set only, for as many epochs as the whole SLADE run.

``--test-classes seen`` keeps the labeled set and the pool but retrieves on the test images of the labeled
classes 0-4 (dataset ``fashion-mnist-slade-seen``, run directories under ``full-seen-test``): there the
basis, a classifier of those very classes, should tell right pseudo-pairs from wrong ones best.

``--ssl-init RUN`` gives every run the paper's start instead (spec §3, ``student_init="ssl"``): the
backbone of a finished dmlkit run without labels (e.g. ``runs/benchmarks/stml/full/stml-zero-shot``, STML
on the train images of classes 0-4) initialises the teacher, each round's student and the ``supervised``
row; rows and run directories get the suffix ``[ssl-init]``.

Usage (from the repository root)::

    python experiments/slade.py            # full (about 25 min on 2 CPU cores)
    python experiments/slade.py --quick    # 8,000 training (5,000 labeled) / 1,000 test images, 1 epoch per stage
    python experiments/slade.py --only slade-all-pairs
    python experiments/slade.py --seeds 1 2        # more training seeds (same labeled set and pool)
    python experiments/slade.py --ssl-init runs/benchmarks/stml/full/stml-zero-shot
    python experiments/slade.py --test-classes seen --only slade --only slade-all-pairs   # test on classes 0-4

Each run replaces its own rows in ``experiments/results/slade.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np
from _common import (
    EXPERIMENT_RESULTS_DIR,
    SSL_SUFFIX,
    backbone_weights_of_run,
    markdown_table,
    save_seed_rows,
    seed_suffix,
)

import dmlkit
from dmlkit.data.base import DatasetRecords

DATASET, NAME, PROTOCOL = (
    "fashion-mnist",
    "fashion-mnist-slade",
    "labeled 0-4 + pool of all other train / test 5-9",
)
#: ``--test-classes seen``: the same labeled set and pool, retrieval on the test images of the labeled classes
SEEN_NAME, SEEN_PROTOCOL = "fashion-mnist-slade-seen", "labeled 0-4 + pool of all other train / test 0-4"
LABELED_PER_CLASS = 1000
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r")
TEACHER_EPOCHS, STUDENT_EPOCHS, ROUNDS = 5, 5, 2
SHARED = {
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "optimizer": "adamw",
    "scheduler": "constant",
    "progress": False,
    "pictures": False,
    "threads": 2,
}
QUICK = {"train_subset": 8000, "test_subset": 1000}  # the 5,000 labeled items + 3,000 of the pool
SLADE_OPTIONS = {
    "backbone": "mnist-net",
    "embedding_dim": 128,
    "backbone_lr_multiplier": 1.0,
    "rank_loss": "ms",
    # SLADE's student restarts from the teacher's SSL initialisation (spec §3 default "ssl"). Trained from
    # scratch, that start is a random network, and a student given the same 5 epochs as the teacher cannot
    # even catch up (first full run: student R@1 .874 / NMI .263 against its teacher's .923 / .445). With no
    # SSL weights to stand in, the student starts from the fine-tuned teacher (the spec's alternative).
    "student_init": "teacher",
    # The pool holds the 5 labeled classes and 5 unseen ones: K = 2C clusters (spec §5 lists K in {C, 2C, 4C}).
    # With K = C = 5 the pseudo labels merge unseen classes (purity 0.44) and every student fell below its
    # teacher; with K = 10, purity 0.63 and the student passes it (README).
    "n_clusters": 10,
    # Filter the pseudo-positives by the basis thresholds, keep every cross-cluster pair as a negative. The
    # spec's default also keeps only the negatives below mu-: the easy half, dropping the hard negatives that
    # Multi-Similarity weights most (row slade-select-both; README).
    "pair_selection": "positives",
    "pictures": False,
}
SUPERVISED_OPTIONS = {
    "loss": "MultiSimilarityLoss",
    "miner": "MultiSimilarityMiner",
    "backbone": "mnist-net",
    "embedding_dim": 128,
}
#: run name -> the rows it produces
RUNS = {
    "slade": ("slade-teacher", "slade-round-1", "slade-round-2", "slade"),
    "slade-all-pairs": ("slade-all-pairs",),
    "slade-no-basis": ("slade-no-basis",),
    "slade-select-both": ("slade-select-both",),
    "supervised": ("supervised",),
}
#: one-round ablations from the slade run's teacher: run name -> the options they change
ABLATIONS = {
    "slade-all-pairs": {"pair_selection": "all"},
    "slade-no-basis": {"lambda2": 0.0},
    "slade-select-both": {"pair_selection": "confident"},
}


def pool_records(
    base: DatasetRecords, labeled_per_class: int = LABELED_PER_CLASS, seed: int = 0, test_seen: bool = False
) -> DatasetRecords:
    """Labeled: ``labeled_per_class`` train images of each class in the first half of the classes; pool: the
    other train images; test: the test images of the second half of the classes (``test_seen``: of the
    first half, the labeled classes)."""
    classes = np.unique(base.labels)
    seen = classes[: len(classes) // 2]
    train = base.splits == "train"
    keep = np.flatnonzero(train | ((base.splits != "train") & (np.isin(base.labels, seen) == test_seen)))
    labels, splits = base.labels[keep], base.splits[keep]
    rng = np.random.default_rng(seed)
    labeled = np.zeros(len(keep), dtype=bool)
    for c in seen:
        members = np.flatnonzero((splits == "train") & (labels == c))
        if len(members) < labeled_per_class:
            raise ValueError(
                f"class {c} has {len(members)} training images, fewer than labeled_per_class={labeled_per_class}"
            )
        labeled[rng.choice(members, labeled_per_class, replace=False)] = True
    images = base.images[keep] if isinstance(base.images, np.ndarray) else [base.images[i] for i in keep]
    return DatasetRecords(
        SEEN_NAME if test_seen else NAME,
        images,
        labels,
        splits,
        base.class_names,
        base.recall_at,
        base.image_size,
        base.channels,
        labeled=labeled,
    )


def register() -> None:
    """Make ``fashion-mnist-slade`` (test 5-9) and ``fashion-mnist-slade-seen`` (test 0-4) loadable by name in
    this process (idempotent: a second call replaces them)."""
    from dmlkit.data import load_records

    for name, test_seen, test in ((NAME, False, "5-9"), (SEEN_NAME, True, "0-4")):
        dmlkit.register_dataset(
            name,
            lambda root, test_seen=test_seen: pool_records(load_records(DATASET, root), test_seen=test_seen),
            f"Fashion-MNIST: 1,000 labeled images of classes 0-4 + pool of all other train; test {test}",
            overwrite=True,
        )


def settings_for(
    run: str,
    quick: bool,
    out_root: Path | None = None,
    ssl_weights: str | None = None,
    threads: int | None = None,
    seed: int = 0,
) -> tuple[str, dict]:
    """``(method, dmlkit.train settings)`` of one run; ``ssl_weights`` (``--ssl-init``): the backbone weights
    file teacher, students and the supervised row start from (None: random initialisation); ``seed``: the
    training seed (the labeled/pool split stays the one of ``pool_records``)."""
    t, s = (1, 1) if quick else (TEACHER_EPOCHS, STUDENT_EPOCHS)
    settings = {**SHARED, "seed": seed, **(QUICK if quick else {})}
    if threads is not None:
        settings["threads"] = threads
    ssl = {"pretrained": ssl_weights} if ssl_weights else {}
    if run == "supervised":
        return "supervised", {
            **settings,
            "epochs": t + ROUNDS * s,
            "batch_size": 32,
            "eval_every": t + ROUNDS * s,
            "options": {**SUPERVISED_OPTIONS, **ssl},
        }
    rounds = ROUNDS if run == "slade" else 1
    options = {**SLADE_OPTIONS, "rounds": rounds, "teacher_epochs": t, "student_epochs": s}
    if ssl:
        options.update(ssl, student_init="ssl")
    if quick:
        options["basis_warmup_iters"] = 3
    if run in ABLATIONS:
        options.update(ABLATIONS[run])
        teacher = out_root / run_dir_name("slade", ssl_weights, seed) / "stage-teacher.pt" if out_root is not None else None
        if teacher is not None and teacher.is_file():  # the very teacher of the slade run (same seed)
            options.update(teacher_weights=str(teacher), teacher_epochs=0)
            t = 0
    return "slade", {
        **settings,
        "epochs": t + rounds * s,
        "batch_size": 64,
        "eval_every": s if t in (0, s) else 1,
        "options": options,
    }


@functools.lru_cache(maxsize=1)
def _train_labels() -> np.ndarray:
    """True labels of the training split in item order (the index space of the pseudo-label buffer),
    read once per process: every student row of a run compares against them."""
    from dmlkit.data import load_records

    records = load_records(NAME)
    return records.labels[records.splits == "train"]


def pseudo_label_quality(run_dir: Path, round_: int) -> dict | None:
    """How right round ``round_``'s k-means pseudo labels are, against the pool's hidden true labels:
    purity, and the precision / recall of the same-cluster pairs as same-class pairs. ``None`` when the
    stage file is missing or the run trained on a subset (its indices no longer match the train split)."""
    from dmlkit.engine.checkpoint import safe_torch_load
    from dmlkit.evaluation.quality import group_purity_sums, partition_pair_stats

    path = run_dir / f"stage-pseudo-labels-round-{round_}.pt"
    if not path.is_file():
        return None
    pseudo = safe_torch_load(path)["pseudo_labels"].numpy()
    true = _train_labels()
    if len(pseudo) != len(true):
        return None
    pool = pseudo >= 0
    numerator, denominator, _ = group_purity_sums(true[pool], pseudo[pool])
    pairs = partition_pair_stats(true[pool], pseudo[pool])
    return {
        "clusters": int(pseudo.max()) + 1,
        "purity": round(numerator / denominator, 4),
        "pair_precision": round(pairs.precision(), 4),
        "pair_recall": round(pairs.recall(), 4),
    }


def run_dir_name(run: str, ssl_weights: str | None = None, seed: int = 0) -> str:
    """``slade``, ``slade[ssl-init]``, ``slade-seed1``...: seed 0 keeps the name of the earlier runs."""
    return run + (SSL_SUFFIX if ssl_weights else "") + seed_suffix(seed)


def run_rows(
    run: str,
    quick: bool,
    out_root: Path,
    ssl_weights: str | None = None,
    threads: int | None = None,
    seed: int = 0,
    test_seen: bool = False,
) -> list[dict]:
    method, settings = settings_for(run, quick, out_root, ssl_weights, threads, seed)
    run_dir = out_root / run_dir_name(run, ssl_weights, seed)
    result = dmlkit.train(method, SEEN_NAME if test_seen else NAME, str(run_dir), overwrite=True, **settings)
    evaluated = {r["epoch"]: r for r in result["history"] if "recall@1" in r}
    t, s = settings["options"].get("teacher_epochs"), settings["options"].get("student_epochs")
    at = {
        "slade-teacher": t,
        "slade": settings["epochs"],
        **{name: settings["epochs"] for name in ABLATIONS},
        "supervised": settings["epochs"],
        **{f"slade-round-{r}": t + r * s for r in range(1, ROUNDS + 1) if t is not None},
    }
    student_round = {  # the round whose pseudo labels each student row trained on
        "slade": ROUNDS,
        **{f"slade-round-{r}": r for r in range(1, ROUNDS + 1)},
        **{name: 1 for name in ABLATIONS},
    }
    rows = []
    for name in RUNS[run]:
        record = evaluated[at[name]]
        rows.append(
            {
                "method": name + (SSL_SUFFIX if ssl_weights else ""),
                "dataset": DATASET,
                "protocol": SEEN_PROTOCOL if test_seen else PROTOCOL,
                "metrics": {k: float(record[k]) for k in METRICS if k in record},
                "seconds": round(float(result["seconds"]), 1),
                "seed": seed,
                "epochs": at[name],
                "images_per_second": round(float(result.get("images_per_second", 0.0)), 1),
                "notes": f"{method} run '{run}', metrics after epoch {at[name]} of {settings['epochs']}; "
                f"options {settings['options']}; seconds are the whole run's",
                **({"quick": True} if quick else {}),
            }
        )
        if name in student_round:
            quality = pseudo_label_quality(run_dir, student_round[name])
            if quality is not None:
                rows[-1]["pseudo_labels"] = quality
    return rows


def _metric(key: str):
    return lambda row: row["metrics"].get(key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="8,000 training (5,000 labeled) / 1,000 test images, 1 epoch per stage"
    )
    names = sorted({n for rows in RUNS.values() for n in rows})
    parser.add_argument(
        "--only", choices=names, action="append", help="run only the run giving this row (repeatable)"
    )
    parser.add_argument("--out", default="runs/benchmarks/slade", help="where the run directories go")
    parser.add_argument("--threads", type=int, default=SHARED["threads"], help="torch threads per run")
    parser.add_argument("--ssl-init", metavar="RUN", help="start every run from this label-free dmlkit run's backbone")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0); one row per seed")
    parser.add_argument("--test-classes", choices=("unseen", "seen"), default="unseen",
                        help="retrieve on the test images of classes 5-9 (default, zero-shot) or 0-4 (the labeled ones)")
    args = parser.parse_args(argv)
    register()
    runs = [run for run, rows in RUNS.items() if not args.only or set(rows) & set(args.only)]
    test_seen = args.test_classes == "seen"
    out_root = Path(args.out) / (("quick" if args.quick else "full") + ("-seen-test" if test_seen else ""))
    ssl_weights = None
    if args.ssl_init:
        out_root.mkdir(parents=True, exist_ok=True)
        ssl_weights = str(backbone_weights_of_run(Path(args.ssl_init), out_root / "ssl-init-backbone.pt"))
    rows, failed = [], []
    for seed, run in ((seed, run) for seed in args.seeds for run in runs):
        print(f"[slade benchmark] {run} / seed {seed}{' (quick)' if args.quick else ''}", flush=True)
        try:
            new = run_rows(run, args.quick, out_root, ssl_weights, args.threads, seed, test_seen)
        except Exception as error:  # noqa: BLE001 - one broken run must not lose the others; reported below
            failed.append(f"{run} / seed {seed}: {type(error).__name__}: {error}")
            print(f"[slade benchmark] FAILED {failed[-1]}", flush=True)
            continue
        rows += new
        save_seed_rows("slade", new, EXPERIMENT_RESULTS_DIR)
    columns = ["method", *[(k, _metric(k)) for k in METRICS], "epochs", "seconds"]
    print(markdown_table(rows, columns))
    for line in failed:
        print(f"FAILED {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
