"""STML without labels on Fashion-MNIST: unsupervised and zero-shot, against the untrained network and raw pixels.

Rows (method x protocol):

- ``stml``: ``dmlkit.train("stml", "fashion-mnist", preset="stml-fashion-mnist")``. ``unsupervised`` trains on
  the 60,000 training images without labels and retrieves within the 10,000 test images; ``zero-shot``
  trains on classes 0-4 of the training split and tests on classes 5-9 of the test split.
- ``initial``: the same network (``mnist-net`` + linear 128-d head) untrained (``dmlkit.train("initial")``).
- ``raw-pixels``: L2-normalised 784-d pixels of the test images, through ``dmlkit.evaluate``.

Every ``stml`` row also carries the cost of the pseudo labels: the time of one contextual-similarity call
(n = 120 images x 2 views) against the time of one full training iteration, measured here in-situ over a
few iterations of the preset model.

Usage (from the repository root)::

    python benchmarks/stml.py              # full: ~25 min of training per protocol on 2 CPU cores
    python benchmarks/stml.py --quick      # a few minutes: 1 epoch on a 3,000-image subset
    python benchmarks/stml.py --only raw-pixels
    python benchmarks/stml.py --only stml --seeds 1 2   # more seeds: the README shows mean ± std

Each run replaces its own rows (same method, dataset, protocol, seed) in ``benchmarks/results/stml.json``
and prints a markdown table.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np
import torch
from _common import save_rows, seeded_run_name

import dmlkit

DATASET = "fashion-mnist"
PRESET = "stml-fashion-mnist"
PROTOCOLS = {"unsupervised": "standard", "zero-shot": "zero-shot"}
ROWS = ("stml", "initial", "raw-pixels")
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r")
QUICK = {"epochs": 1, "train_subset": 3000, "test_subset": 1000}
PAPER_NOTE = "no paper number: STML reports CUB/Cars/SOP only; targets here are R@1 > raw pixels and NMI > 0.60"




def preset_options() -> dict:
    from dmlkit.engine.config import load_preset

    return dict(load_preset(PRESET).get("options") or {})


def train_settings(quick: bool, protocol: str, seed: int = 0) -> dict:
    settings = {"preset": PRESET, "protocol": protocol, "seed": seed, "progress": False, "pictures": False}
    if quick:
        settings.update(QUICK)
    return settings


def test_split(protocol: str, quick: bool):
    """The evaluation split of ``protocol`` (subset like dmlkit.train's in quick mode)."""
    from dmlkit.engine.config import resolve_config
    from dmlkit.engine.run import prepare_data

    settings = {"method": "initial", "dataset": DATASET, "protocol": protocol, "seed": 0}
    if quick:
        settings["test_subset"] = QUICK["test_subset"]
    return prepare_data(resolve_config(settings), "none").query


def row(method: str, protocol_name: str, metrics: dict, seconds: float, notes: str, quick: bool, seed: int = 0,
        **extra) -> dict:
    out = {"method": method, "dataset": DATASET, "protocol": protocol_name,
           "metrics": {k: float(metrics[k]) for k in METRICS if k in metrics},
           "seconds": round(float(seconds), 2), "seed": seed, "notes": notes, **extra}
    if quick:
        out["quick"] = True
    return out


def similarity_overhead(iterations: int = 5) -> dict:
    """Seconds of one contextual-similarity call and of one full iteration (views, teacher, W, student,
    losses, backward, EMA, AdamP step) at batch 120 x 2 views, with the preset model."""
    import dmlkit.methods.stml as stml_module
    from dmlkit.methods.base import BuildInfo
    from dmlkit.models.optim import build_optimizer

    info = BuildInfo(channels=1, image_size=28, num_train=60000, num_classes=0, dataset=DATASET, views_preset="grey28")
    method = stml_module.STML.from_options(preset_options(), info)
    method.train()
    optimizer = build_optimizer("adamp", method.parameter_groups(1e-4, 1e-2), lr=1e-4, weight_decay=1e-2)
    k = method.config.num_neighbors
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, 60000, (120 // k, k), generator=gen)
    index[:, 1] = index[:, 0].roll(1)  # NN groups share members across groups
    batch = {"image": torch.rand(120, 1, 28, 28, generator=gen), "index": index.flatten(), "label": torch.full((120,), -1)}
    real, spent = stml_module.contextual_similarity, []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = real(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return out

    stml_module.contextual_similarity = timed
    try:
        times = []
        for step in range(iterations + 1):
            start = time.perf_counter()
            method.training_loss(batch)["loss"].backward()
            method.before_optimizer_step()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    finally:
        stml_module.contextual_similarity = real
    iteration, similarity = float(np.median(times[1:])), float(np.median(spent[1:]))
    return {"iteration_seconds": round(iteration, 5), "similarity_seconds": round(similarity, 5),
            "similarity_fraction": round(similarity / iteration, 4)}


def run_stml(protocol_name: str, quick: bool, out_root: Path, seed: int = 0) -> dict:
    overhead = similarity_overhead()
    run_dir = out_root / seeded_run_name("stml", protocol_name, seed)
    result = dmlkit.train("stml", DATASET, str(run_dir), overwrite=True, **train_settings(quick, PROTOCOLS[protocol_name], seed))
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    epochs = result["config"]["epochs"]
    return row("stml", protocol_name, result["test"], result["seconds"],
               f"preset {PRESET}, {epochs} epoch(s); {PAPER_NOTE}", quick, seed=seed,
               images_per_second=round(result["images_per_second"], 1), epochs=epochs,
               best_epoch=result.get("best", {}).get("epoch"), peak_rss_mb=round(peak_rss_mb, 1),
               nmi_over_kmeans_seeds=nmi_over_kmeans_seeds(run_dir), **overhead)


def nmi_over_kmeans_seeds(run_dir: Path, seeds: int = 5) -> dict:
    """NMI of the run's test embedding under ``seeds`` k-means seeds (the table's NMI is seed 0's): the
    spread shows how much of an NMI difference between rows is the clustering's own noise."""
    from dmlkit.engine.run import load_run, prepare_data
    from dmlkit.evaluation.embedding import embed_dataset
    from dmlkit.methods import method_class

    config, method, _ = load_run(run_dir)
    query = prepare_data(config, method_class(config.method).uses_labels).query
    embeddings = embed_dataset(method.embed, query, modules=(method,))
    values = [dmlkit.evaluate(embeddings, query.true_labels, recall_at=(1,), seed=seed)["nmi"] for seed in range(seeds)]
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4),
            "min": round(min(values), 4), "max": round(max(values), 4), "seeds": seeds}


def run_initial(protocol_name: str, quick: bool, out_root: Path) -> dict:
    options = {key: value for key, value in preset_options().items() if key in ("backbone", "embedding_dim")}
    settings = {"protocol": PROTOCOLS[protocol_name], "seed": 0, "progress": False, "pictures": False,
                "options": options}
    if quick:
        settings.update(train_subset=QUICK["train_subset"], test_subset=QUICK["test_subset"])
    result = dmlkit.train("initial", DATASET, str(out_root / f"initial-{protocol_name}"), overwrite=True, **settings)
    return row("initial", protocol_name, result["test"], result["seconds"],
               f"untrained {options.get('backbone', 'default')} + linear {options.get('embedding_dim', 128)}-d head", quick)


def run_raw_pixels(protocol_name: str, quick: bool, out_root: Path) -> dict:
    start = time.perf_counter()
    query = test_split(PROTOCOLS[protocol_name], quick)
    pixels = torch.from_numpy(np.asarray(query.images, dtype=np.float32).reshape(len(query), -1) / 255.0)
    metrics = dmlkit.evaluate(torch.nn.functional.normalize(pixels, dim=1), query.true_labels,
                              recall_at=query.recall_at, seed=0)
    return row("raw-pixels", protocol_name, metrics, time.perf_counter() - start,
               "L2-normalised 784-d pixels, Euclidean kNN", quick)


RUNNERS = {"stml": run_stml, "initial": run_initial, "raw-pixels": run_raw_pixels}


def save(rows: list[dict], results: str = "stml") -> dict:
    """Replace the rows with the same (method, dataset, protocol, seed) in the results file."""
    return save_rows(results, rows)


def table(rows: list[dict]) -> str:
    head = "| method | protocol | R@1 | R@2 | R@4 | R@8 | NMI | MAP@R | seconds | img/s | W time / iteration |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        m = r["metrics"]
        fraction = f"{r['similarity_fraction']:.2%}" if "similarity_fraction" in r else ""
        lines.append(
            f"| {r['method']}{' (quick)' if r.get('quick') else ''} | {r['protocol']} | "
            + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r"))
            + f" | {r['seconds']:.0f} | {r.get('images_per_second', '')} | {fraction} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on a 3,000-image subset, 1,000 test images")
    parser.add_argument("--only", choices=ROWS, action="append", help="run only this row (repeatable)")
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), action="append", help="only this protocol (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one stml run per seed (default: 0); initial and raw-pixels run once, seed 0")
    parser.add_argument("--out", default="runs/benchmarks/stml", help="where the run directories go")
    parser.add_argument("--results", default="stml", help="results file stem under benchmarks/results (default stml)")
    args = parser.parse_args(argv)
    out_root = Path(args.out) / ("quick" if args.quick else "full")
    rows = []
    for protocol_name in args.protocol or PROTOCOLS:
        for name in args.only or ROWS:
            for seed in args.seeds if name == "stml" else [0]:
                print(f"[stml benchmark] {name} / {protocol_name} / seed {seed}{' (quick)' if args.quick else ''}",
                      flush=True)
                extra = {"seed": seed} if name == "stml" else {}
                rows.append(RUNNERS[name](protocol_name, args.quick, out_root, **extra))
                save([rows[-1]], args.results)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
