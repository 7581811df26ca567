"""What share of an STML and of a PLM training iteration do the pseudo labels take on Fashion-MNIST's presets?

STML's contextual similarity (Eqs. 2-5, 120 images × 2 views) and PLM's piece construction (``batch_pieces``,
100 images × 2 views of 128-d) against one full iteration (views, both encoders, pseudo labels, losses,
backward, optimizer step, EMA) of the preset model on random images. Measured in-situ with ``cProfile``: the
cumulative time of the pseudo-label function over the iterations, divided by theirs (the first, warm-up
iteration left out). The earlier per-seed rows of ``benchmarks/results/stml.json`` and ``plm.json``
(``similarity_fraction``, ``pieces_fraction``) were measured the same way inside those benchmarks.

    python experiments/pseudo_label_cost.py [--iterations 5]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch

#: method -> (preset, batch size, the pseudo-label function's name and module file)
CASES = {"stml": ("stml-fashion-mnist", 120, "contextual_similarity", "targets/contextual.py"),
         "plm": ("plm-fashion-mnist", 100, "batch_pieces", "targets/manifold.py")}


def build(method_name: str, preset: str):
    from dmlkit.engine.config import load_preset
    from dmlkit.methods import method_class
    from dmlkit.methods.base import BuildInfo

    info = BuildInfo(channels=1, image_size=28, num_train=60000, num_classes=0, dataset="fashion-mnist",
                     views_preset="grey28")
    method = method_class(method_name).from_options(dict(load_preset(preset).get("options") or {}), info)
    return method.train()


def batch(method, size: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    group = getattr(method.config, "group_size", 1)
    index = torch.randint(0, 60000, (size // group, group), generator=gen)
    if group > 1:
        index[:, 1] = index[:, 0].roll(1)  # NN groups share members across groups
    return {"image": torch.rand(size, 1, 28, 28, generator=gen), "index": index.flatten(),
            "label": torch.full((size,), -1)}


def step(method, optimizer, data: dict) -> None:
    method.training_loss(data)["loss"].backward()
    method.before_optimizer_step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    method.after_step()


def measure(method_name: str, iterations: int) -> dict:
    preset, size, function, module = CASES[method_name]
    method = build(method_name, preset)
    optimizer = torch.optim.Adam(method.parameter_groups(1e-4, 0.0))
    data = batch(method, size)
    step(method, optimizer, data)  # warm-up
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(iterations):
        step(method, optimizer, data)
    profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
    spent = sum(v[3] for (file, _, name), v in stats.items() if name == function and file.endswith(module))
    return {"method": method_name, "iteration_seconds": round(total / iterations, 5),
            f"{function}_seconds": round(spent / iterations, 5), "fraction": round(spent / total, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for name in CASES:
        print(measure(name, args.iterations))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
