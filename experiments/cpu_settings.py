"""Which CPU settings make mnist-net training faster on 2 cores: OpenMP wait policy × threads, channels-last,
torch.compile, no_grad vs inference_mode for embedding (docs/speed.md)?

Each setting is timed in a fresh subprocess (the wait policy must be set before torch loads), and the
settings of one comparison run back to back, ``--repeats`` times alternately; the median images/s is
kept and each row names its baseline's images/s from the same rounds. Training = forward + backward +
AdamW step of mnist-net + a linear 128-d head on a 128-image batch of 28 px (random pixels: speed
does not depend on them); embedding = forward of 512 images.

    python experiments/cpu_settings.py [--repeats 3] [--steps 20]

Writes ``experiments/results/cpu_settings.json`` (rows keyed by ``setting``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import EXPERIMENT_RESULTS_DIR, ROOT, markdown_table, save_rows

# name -> (environment, worker options)
SETTINGS = {
    "passive-1thread": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"threads": 1}),
    "active-1thread": ({"OMP_WAIT_POLICY": "ACTIVE"}, {"threads": 1}),
    "passive-2threads": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"threads": 2}),
    "active-2threads": ({"OMP_WAIT_POLICY": "ACTIVE"}, {"threads": 2}),
    "contiguous": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"threads": 1, "contiguous": True}),
    "compiled": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"threads": 1, "compile": True}),
    "embed-no-grad": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"threads": 1, "embed": "no_grad"}),
    "embed-inference-mode": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"threads": 1, "embed": "inference_mode"}),
}
COMPARISONS = {  # setting -> the baseline it is compared with (the default)
    "active-1thread": "passive-1thread", "passive-2threads": "passive-1thread",
    "active-2threads": "passive-1thread", "contiguous": "passive-1thread", "compiled": "passive-1thread",
    "embed-inference-mode": "embed-no-grad",
}


def worker(options: dict, steps: int) -> dict:
    import torch

    from dmlkit.models.backbones import build_backbone

    torch.set_num_threads(options["threads"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(build_backbone("mnist-net", 1, 28), torch.nn.LazyLinear(128))
    model(torch.rand(2, 1, 28, 28))
    if not options.get("contiguous"):
        model = model.to(memory_format=torch.channels_last)
    if options.get("embed"):
        x = torch.rand(512, 1, 28, 28)
        context = torch.no_grad if options["embed"] == "no_grad" else torch.inference_mode
        model.eval()
        with context():
            model(x)  # warm-up
            t0 = time.perf_counter()
            for _ in range(steps):
                model(x)
        return {"images_per_second": steps * 512 / (time.perf_counter() - t0)}
    step_model = torch.compile(model) if options.get("compile") else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(128, 1, 28, 28)

    def step():
        loss = step_model(x).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t_compile = time.perf_counter()
    for _ in range(2):  # warm-up (and compilation)
        step()
    compile_seconds = time.perf_counter() - t_compile
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"images_per_second": steps * 128 / (time.perf_counter() - t0), "warmup_seconds": compile_seconds}


def measure(name: str, steps: int) -> dict:
    env_extra, options = SETTINGS[name]
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(options), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.steps)))
        return 0
    results: dict[str, list[dict]] = {name: [] for name in args.settings}
    for _ in range(args.repeats):  # alternate settings so each round sees the same load
        for name in args.settings:
            results[name].append(measure(name, args.steps))
            print(name, results[name][-1], file=sys.stderr, flush=True)
    rows = []
    for name, runs in results.items():
        speeds = [r["images_per_second"] for r in runs if "images_per_second" in r]
        row = {"setting": name, "dataset": "random-28px", "backbone": "mnist-net", "seed": 0,
               "environment": SETTINGS[name][0], "options": SETTINGS[name][1], "repeats": args.repeats,
               "images_per_second": round(statistics.median(speeds), 1) if speeds else None,
               "all_images_per_second": [round(s, 1) for s in speeds], "load_average": os.getloadavg()[0]}
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            row["error"] = errors[0]
        if "warmup_seconds" in (runs[0] if runs else {}):
            row["warmup_seconds"] = round(statistics.median(r["warmup_seconds"] for r in runs if "warmup_seconds" in r), 2)
        base = COMPARISONS.get(name)
        if base in results and speeds:
            base_speeds = [r["images_per_second"] for r in results[base] if "images_per_second" in r]
            row["baseline"] = base
            row["speed_ratio_vs_baseline"] = round(statistics.median(s / b for s, b in zip(speeds, base_speeds)), 3)
        rows.append(row)
    save_rows("cpu_settings", rows, key=("setting", "dataset"), folder=EXPERIMENT_RESULTS_DIR)
    print(markdown_table(rows, ["setting", "images_per_second", "baseline", "speed_ratio_vs_baseline",
                                "all_images_per_second", "warmup_seconds", "error", "load_average"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
