"""What does dmlkit's engine cost over a bare PyTorch loop with the same model, batches, views and optimizer?

Training overhead: dmlkit's engine against a bare PyTorch loop, same model, batches, views and optimizer.

For each method (``supervised``: a pytorch-metric-learning loss on m-per-class batches; ``stml``: EMA
teacher, two views, contextual pseudo labels) on a Fashion-MNIST subset with the ``mnist-net`` backbone,
one process runs, alternately, ``--repeats`` times:

* **bare**: the method object dmlkit builds (same network, views, loss) trained by a loop written here:
  ``DataLoader`` over the method's batch sampler, ``loss.backward()``, the optimizer dmlkit configures,
  the method's before/after-step hooks (STML's EMA teacher). STML's neighbour table is refreshed
  before every epoch, outside the timed steps.
* **dmlkit**: :func:`dmlkit.engine.run.run` (what ``dmlkit train`` calls) on the same config, with its
  evaluation, checkpoints and logs. Its training images/s is read from each epoch's ``epoch_seconds``
  (training steps only: the engine starts that clock after the refresh and stops it before evaluating).

Rows (``benchmarks/results/train_overhead.json``): ``method``, images/s of both, ``ratio_vs_bare_loop``
(bare images/s ÷ dmlkit images/s = dmlkit's time per image over the bare loop's; median over repeats,
all repeats listed), ``cpu_ratio_vs_bare_loop`` (the same with process CPU time, less sensitive to
other load on a shared machine; one thread, so CPU time ≈ wall time when idle), and ``profile``: the seconds dmlkit spent outside the training steps (refresh =
embedding + kNN, evaluation, checkpoints) and in Lightning's logging calls, per run.

    python experiments/train_overhead.py [--methods supervised stml] [--repeats 3] [--train-subset 2400]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (docs/speed.md)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import ROOT, markdown_table, save_rows

sys.path.insert(0, str(ROOT / "src"))

import torch

BATCH = {"supervised": 128, "stml": 120}


def settings(method: str, train_subset: int, epochs: int, out: str) -> dict:
    return {"method": method, "dataset": "fashion-mnist", "out": out, "epochs": epochs, "batch_size": BATCH[method],
            "train_subset": train_subset, "test_subset": 1000, "seed": 0, "progress": False, "pictures": False,
            "threads": torch.get_num_threads(), "options": {"backbone": "mnist-net"}}


def bare_loop(method_name: str, train_subset: int, epochs: int) -> dict:
    """The same method trained by a plain loop: returns images/s of the training steps and data share."""
    from torch.utils.data import DataLoader

    from dmlkit.engine.config import resolve_config
    from dmlkit.engine.module import MethodModule, _collate
    from dmlkit.engine.run import build_method, prepare_data
    from dmlkit.evaluation.embedding import embed_dataset
    from dmlkit.evaluation.knn import refresh_knn
    from dmlkit.methods import method_class
    from dmlkit.methods.base import RefreshContext

    with tempfile.TemporaryDirectory() as tmp:
        config = resolve_config(settings(method_name, train_subset, epochs, tmp))
    torch.manual_seed(0)
    data = prepare_data(config, method_class(config.method).uses_labels)
    method = build_method(config, data.train)
    module = MethodModule(method, data.train, data.query, None, None,
                          {"lr": config.lr, "weight_decay": config.weight_decay or 0.0, "optimizer": config.optimizer,
                           "scheduler": "constant", "epochs": epochs}, data.query.recall_at)
    optimizer = module.configure_optimizers()  # the optimizer dmlkit builds (per-epoch scheduler: not timed)
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    images, step_seconds, data_seconds, step_cpu = 0, 0.0, 0.0, 0.0
    for epoch in range(epochs):
        context = RefreshContext(epoch=epoch, train=data.train, device=torch.device("cpu"), seed=0, knn=refresh_knn,
                                 embed=lambda fn, ds=None: embed_dataset(fn, ds or data.train, modules=(method,)))
        method.refresh(context)
        method.train()
        batches = [list(b) for b in method.batch_sampler(data.train, config.batch_size, 0, epoch)]
        loader = iter(DataLoader(data.train, batch_sampler=batches, collate_fn=_collate, num_workers=0))
        start, cpu_start = time.perf_counter(), time.process_time()
        while True:
            t0 = time.perf_counter()
            batch = next(loader, None)
            data_seconds += time.perf_counter() - t0
            if batch is None:
                break
            loss = method.training_loss(batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.before_optimizer_step()
            optimizer.step()
            method.after_step()
            images += len(batch["index"])
        step_seconds += time.perf_counter() - start
        step_cpu += time.process_time() - cpu_start
    return {"images_per_second": images / step_seconds, "step_seconds": step_seconds, "data_seconds": data_seconds,
            "step_cpu_seconds": step_cpu, "images": images}


class Profile:
    """Wall time inside chosen functions during one dmlkit run (patched in, restored after)."""

    def __init__(self, targets: dict[str, tuple[object, str]]):
        self.targets, self.seconds, self.saved = targets, dict.fromkeys(targets, 0.0), {}

    def __enter__(self):
        for name, (owner, attr) in self.targets.items():
            original = getattr(owner, attr)
            self.saved[name] = original

            def timed(*args, _original=original, _name=name, **kwargs):
                t0 = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds[_name] += time.perf_counter() - t0

            setattr(owner, attr, timed)
        return self

    def __exit__(self, *exc):
        for name, (owner, attr) in self.targets.items():
            setattr(owner, attr, self.saved[name])


def dmlkit_run(method_name: str, train_subset: int, epochs: int) -> dict:
    import importlib

    from dmlkit.engine.config import resolve_config
    from dmlkit.engine.module import MethodModule
    from dmlkit.methods import method_class

    run_module = importlib.import_module("dmlkit.engine.run")  # the module (dmlkit.engine.run is also a function)
    cls = method_class(method_name)
    targets = {"refresh": (cls, "refresh"), "evaluation": (MethodModule, "evaluate_split"),
               "checkpoints": (run_module, "_save_checkpoints"), "logging": (MethodModule, "log_dict"),
               "report": (run_module, "_report")}
    cpu = {"start": 0.0, "steps": 0.0}
    start_hook, end_hook = MethodModule.on_train_epoch_start, MethodModule.on_train_epoch_end

    def epoch_start(module):  # the engine's own clock starts after its refresh: so does this one
        start_hook(module)
        cpu["start"] = time.process_time()

    def epoch_end(module):
        cpu["steps"] += time.process_time() - cpu["start"]
        end_hook(module)

    MethodModule.on_train_epoch_start, MethodModule.on_train_epoch_end = epoch_start, epoch_end
    try:
        with tempfile.TemporaryDirectory() as tmp, Profile(targets) as profile:
            t0 = time.perf_counter()
            result = run_module.run(resolve_config(settings(method_name, train_subset, epochs, tmp)))
            total = time.perf_counter() - t0
    finally:
        MethodModule.on_train_epoch_start, MethodModule.on_train_epoch_end = start_hook, end_hook
    history = result["history"]
    step_seconds = sum(r["epoch_seconds"] for r in history)
    images = sum(r["images_per_second"] * r["epoch_seconds"] for r in history)
    return {"images_per_second": images / step_seconds, "step_seconds": step_seconds, "total_seconds": total,
            "step_cpu_seconds": cpu["steps"], "images": images,
            "profile": {k: round(v, 3) for k, v in profile.seconds.items()},
            "recall@1": result["test"]["recall@1"]}


def measure(method: str, repeats: int, train_subset: int, epochs: int) -> dict:
    runs = []
    for _ in range(repeats):  # alternate, so both see the same machine load
        bare = bare_loop(method, train_subset, epochs)
        ours = dmlkit_run(method, train_subset, epochs)
        cpu_ratio = (ours["step_cpu_seconds"] / ours["images"]) / (bare["step_cpu_seconds"] / bare["images"])
        runs.append((bare["images_per_second"] / ours["images_per_second"], cpu_ratio, bare, ours))
        print(f"[{method}] bare {bare['images_per_second']:.0f} img/s, dmlkit {ours['images_per_second']:.0f} img/s "
              f"(ratio {runs[-1][0]:.3f}, CPU-time ratio {cpu_ratio:.3f}); profile {ours['profile']}",
              file=sys.stderr, flush=True)
    ratio, _, bare, ours = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    return {
        "method": method, "dataset": "fashion-mnist", "protocol": f"train_subset={train_subset}, epochs={epochs}",
        "seed": 0, "threads": torch.get_num_threads(), "backbone": "mnist-net", "batch_size": BATCH[method],
        "bare_images_per_second": round(bare["images_per_second"], 1),
        "dmlkit_images_per_second": round(ours["images_per_second"], 1),
        "ratio_vs_bare_loop": round(ratio, 3), "ratios_vs_bare_loop": sorted(round(r[0], 3) for r in runs),
        "cpu_ratio_vs_bare_loop": round(statistics.median(r[1] for r in runs), 3),
        "cpu_ratios_vs_bare_loop": sorted(round(r[1], 3) for r in runs),
        "bare_data_seconds": round(bare["data_seconds"], 3), "bare_step_seconds": round(bare["step_seconds"], 3),
        "dmlkit_step_seconds": round(ours["step_seconds"], 3), "dmlkit_total_seconds": round(ours["total_seconds"], 3),
        "profile": ours["profile"], "load_average": os.getloadavg()[0], "repeats": repeats,
        "notes": "ratio = dmlkit's time per training image / the bare loop's (training steps only; refresh, "
                 "evaluation and checkpoints are in profile, seconds per run)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["supervised", "stml"], choices=list(BATCH))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=2400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for method in args.methods:
        row = measure(method, args.repeats, args.train_subset, args.epochs)
        save_rows("train_overhead", [row], key=("method", "dataset", "protocol", "seed", "threads"))
        rows.append(row)
    print(markdown_table(rows, ["method", "threads", "bare_images_per_second", "dmlkit_images_per_second",
                                "ratio_vs_bare_loop", "ratios_vs_bare_loop", "cpu_ratio_vs_bare_loop", "profile", "load_average"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
