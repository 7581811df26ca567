"""PLM without labels on Fashion-MNIST: unsupervised and zero-shot, against STML, the untrained network and raw pixels.

Rows (method x protocol), each through ``dmlkit.train`` except raw pixels:

- ``plm``: preset ``plm-fashion-mnist`` (mnist-net + 128-d head from scratch, Sec. 4.1 defaults otherwise).
- ``plm-no-selection``: Table 3 ablation (1), pieces over all k neighbours (``selection=False``).
- ``plm-binary``: Table 3 ablation (2), binary neighbourhood similarity (``similarity=binary``).
- ``stml``: preset ``stml-fashion-mnist`` (the STML helper's Fashion-MNIST setting).
- ``initial``: the untrained mnist-net + linear 128-d head.
- ``raw-pixels``: L2-normalised 784-d test pixels, through ``dmlkit.evaluate``.

Protocols: ``unsupervised`` trains on the 60,000 training images with labels hidden and retrieves within
the 10,000 test images; ``zero-shot`` trains on classes 0-4 and tests on classes 5-9.

Every PLM row also carries the cost of the pseudo labels: the seconds of building the pieces
(``batch_pieces``: 200 points of 128-d, i.e. 100 images x 2 views) against one full training iteration
(views, both encoders, pieces, similarities, losses, backward, Adam step, EMA), measured in-situ.
Target: pieces < 20 % of the iteration.

``--sweep`` runs Figure 3's one-at-a-time sweeps (N_ρ, m, N_α, δ) on the zero-shot protocol at a reduced
scale (``SWEEP_SCALE``: 12,000 of the 30,000 training images, 2 epochs, the full 5,000-image test split; about
1.5 min per run on one core) as rows ``plm-sweep`` (the defaults) and ``plm-sweep[option=value]``, one per
seed, and draws Recall@1 mean ± std over the seeds against each option to
``benchmarks/results/plm_sweep.png`` (the shape of the paper's Figure 3, which is on CUB with 5 runs).

Usage (from the repository root)::

    python benchmarks/plm.py                 # full: ~25 min of training per row and protocol on 2 CPU cores
    python benchmarks/plm.py --quick         # a few minutes per row: 1 epoch, 3,000 training images
    python benchmarks/plm.py --only plm --only raw-pixels --protocol zero-shot
    python benchmarks/plm.py --sweep --seeds 0 1 2    # Figure 3 at the reduced scale, ~45 min on 2 cores
    python benchmarks/plm.py --sweep --quick
    python benchmarks/plm.py --variant delta=1.0   # only rows plm[delta=1.0], both protocols
    python benchmarks/plm.py --only plm --seeds 1 2   # more seeds: the README shows mean ± std
    python benchmarks/plm.py --ssl-init runs/benchmarks/stml/full/stml-unsupervised-seed1 --only plm \
        --protocol unsupervised --variant delta=1.0   # from STML's backbone: rows plm[ssl-init], plm[delta=1.0][ssl-init]

Each run replaces its own rows (same method, dataset, protocol, seed) in ``benchmarks/results/plm.json`` and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plm_sweep
from _common import (
    ROOT,
    SSL_SUFFIX,
    backbone_weights_of_run,
    load_results,
    results_path,
    save_rows,
    seeded_run_name,
)
from plm_sweep import SWEEP, SWEEP_BASE, SWEEP_SCALE

sys.path.insert(0, str(ROOT / "src"))

import numpy as np
import torch

import dmlkit

DATASET = "fashion-mnist"
PRESET = "plm-fashion-mnist"
STML_PRESET = "stml-fashion-mnist"
PROTOCOLS = {"unsupervised": "standard", "zero-shot": "zero-shot"}
ABLATIONS = {"plm": {}, "plm-no-selection": {"selection": False}, "plm-binary": {"similarity": "binary"}}
ROWS = (*ABLATIONS, "stml", "initial", "raw-pixels")
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r")
QUICK = {"epochs": 1, "train_subset": 3000, "test_subset": 1000}
PAPER_NOTE = "no paper number: PLM reports CUB/Cars/SOP only (Table 1: CUB R@1 60.6 at 128-d)"


def preset_options() -> dict:
    from dmlkit.engine.config import load_preset

    return dict(load_preset(PRESET).get("options") or {})


def base_settings(quick: bool, protocol: str, seed: int = 0) -> dict:
    settings = {"protocol": protocol, "seed": seed, "progress": False, "pictures": False}
    if quick:
        settings.update(QUICK)
    return settings


def row(
    method: str,
    protocol_name: str,
    metrics: dict,
    seconds: float,
    notes: str,
    quick: bool,
    seed: int = 0,
    **extra,
) -> dict:
    out = {
        "method": method,
        "dataset": DATASET,
        "protocol": protocol_name,
        "metrics": {k: float(metrics[k]) for k in METRICS if k in metrics},
        "seconds": round(float(seconds), 2),
        "seed": seed,
        "notes": notes,
        **extra,
    }
    if quick:
        out["quick"] = True
    return out


def piece_overhead(options: dict, iterations: int = 5) -> dict:
    """Median seconds of ``batch_pieces`` (200 x 128-d) and of one full PLM iteration with the preset model."""
    import dmlkit.methods.plm as plm_module
    from dmlkit.methods.base import BuildInfo

    info = BuildInfo(
        channels=1, image_size=28, num_train=60000, num_classes=0, dataset=DATASET, views_preset="grey28"
    )
    method = plm_module.PLM.from_options({**preset_options(), **options}, info)
    method.train()
    optimizer = torch.optim.Adam(method.parameter_groups(5e-4, 0.0))
    gen = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(100, 1, 28, 28, generator=gen),
        "index": torch.arange(100),
        "label": torch.full((100,), -1),
    }
    real, spent = plm_module.batch_pieces, []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = real(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return out

    plm_module.batch_pieces = timed
    try:
        times = []
        for _ in range(iterations + 1):
            start = time.perf_counter()
            method.training_loss(batch)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_step()
            times.append(time.perf_counter() - start)
    finally:
        plm_module.batch_pieces = real
    iteration, pieces = float(np.median(times[1:])), float(np.median(spent[1:]))
    return {
        "iteration_seconds": round(iteration, 5),
        "pieces_seconds": round(pieces, 5),
        "pieces_fraction": round(pieces / iteration, 4),
    }


def run_plm_variant(
    name: str,
    options: dict,
    protocol_name: str,
    quick: bool,
    out_root: Path,
    note: str,
    seed: int = 0,
    scale: dict | None = None,
) -> dict:
    """One PLM run as a row; ``scale`` (e.g. ``SWEEP_SCALE``) overrides the preset's size unless ``quick``."""
    overhead = piece_overhead(options)
    settings = {
        **(scale or {}),
        **base_settings(quick, PROTOCOLS[protocol_name], seed),
        "preset": PRESET,
        "options": {**preset_options(), **options},
    }
    run_dir = out_root / seeded_run_name(name, protocol_name, seed)
    result = dmlkit.train("plm", DATASET, str(run_dir), overwrite=True, **settings)
    epochs = result["config"]["epochs"]
    return row(
        name,
        protocol_name,
        result["test"],
        result["seconds"],
        f"preset {PRESET}{note}, {epochs} epoch(s); {PAPER_NOTE}",
        quick,
        seed=seed,
        epochs=epochs,
        options=options,
        images_per_second=round(result.get("images_per_second", float("nan")), 1),
        best_epoch=result.get("best", {}).get("epoch"),
        **overhead,
    )


def run_stml(protocol_name: str, quick: bool, out_root: Path) -> dict:
    settings = {**base_settings(quick, PROTOCOLS[protocol_name]), "preset": STML_PRESET}
    result = dmlkit.train("stml", DATASET, str(out_root / f"stml-{protocol_name}"), overwrite=True, **settings)
    return row(
        "stml",
        protocol_name,
        result["test"],
        result["seconds"],
        f"preset {STML_PRESET}, {result['config']['epochs']} epoch(s)",
        quick,
    )


def run_initial(protocol_name: str, quick: bool, out_root: Path) -> dict:
    options = {key: value for key, value in preset_options().items() if key in ("backbone", "embedding_dim")}
    settings = {**base_settings(quick, PROTOCOLS[protocol_name]), "options": options}
    settings.pop("epochs", None)
    result = dmlkit.train("initial", DATASET, str(out_root / f"initial-{protocol_name}"), overwrite=True, **settings)
    return row(
        "initial",
        protocol_name,
        result["test"],
        result["seconds"],
        f"untrained {options.get('backbone')} + linear {options.get('embedding_dim')}-d head",
        quick,
    )


def run_raw_pixels(protocol_name: str, quick: bool, out_root: Path) -> dict:
    from dmlkit.engine.config import resolve_config
    from dmlkit.engine.run import prepare_data

    start = time.perf_counter()
    settings = {"method": "initial", "dataset": DATASET, "protocol": PROTOCOLS[protocol_name], "seed": 0}
    if quick:
        settings["test_subset"] = QUICK["test_subset"]
    query = prepare_data(resolve_config(settings), "none").query
    pixels = torch.from_numpy(np.asarray(query.images, dtype=np.float32).reshape(len(query), -1) / 255.0)
    metrics = dmlkit.evaluate(
        torch.nn.functional.normalize(pixels, dim=1), query.true_labels, recall_at=query.recall_at, seed=0
    )
    return row(
        "raw-pixels",
        protocol_name,
        metrics,
        time.perf_counter() - start,
        "L2-normalised 784-d pixels, Euclidean kNN",
        quick,
    )


def runner(name: str, start: dict | None = None):
    """The row's run; ``start`` (``--ssl-init``): ``{"pretrained": weights}`` for the PLM rows, suffixed ``[ssl-init]``."""
    if name in ABLATIONS:
        options = {**ABLATIONS[name], **(start or {})}
        note = "" if not options else f" + {options}"
        return lambda protocol, quick, out, seed=0: run_plm_variant(
            name + (SSL_SUFFIX if start else ""), options, protocol, quick, out, note, seed
        )
    return {"stml": run_stml, "initial": run_initial, "raw-pixels": run_raw_pixels}[name]


def save(rows: list[dict]) -> dict:
    """Replace the rows with the same (method, dataset, protocol, seed) in the results file."""
    return save_rows("plm", rows)


def table(rows: list[dict]) -> str:
    head = "| method | protocol | R@1 | R@2 | R@4 | R@8 | NMI | MAP@R | seconds | pieces / iteration |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        m = r["metrics"]
        fraction = (
            f"{r['pieces_fraction']:.1%} ({r['pieces_seconds'] * 1e3:.0f} ms)"
            if "pieces_fraction" in r
            else ""
        )
        lines.append(
            f"| {r['method']}{' (quick)' if r.get('quick') else ''} | {r['protocol']} | "
            + " | ".join(
                f"{m.get(k, float('nan')):.4f}"
                for k in ("recall@1", "recall@2", "recall@4", "recall@8", "nmi", "map@r")
            )
            + f" | {r['seconds']:.0f} | {fraction} |"
        )
    return "\n".join(lines)


def variant_job(option: str, value: object, protocol: str, start: dict | None = None) -> tuple:
    """``(row name, protocol, runner)`` for PLM with one option changed: row ``plm[OPTION=VALUE]`` (with
    ``start``, the ``--ssl-init`` weights: ``plm[OPTION=VALUE][ssl-init]``)."""
    name, options = f"plm[{option}={value}]" + (SSL_SUFFIX if start else ""), {option: value, **(start or {})}
    return name, protocol, lambda p, q, o, seed=0: run_plm_variant(name, options, p, q, o, f" + {options}", seed)


def sweep_jobs() -> list[tuple]:
    """Figure 3's runs on the zero-shot protocol at ``SWEEP_SCALE``: the defaults, then one option at a time."""
    variants = [(SWEEP_BASE, {})] + [
        (f"{SWEEP_BASE}[{option}={value}]", {option: value}) for option, values in SWEEP.items() for value in values
    ]
    note = f" at sweep scale {SWEEP_SCALE}"
    return [
        (
            name,
            "zero-shot",
            lambda p, q, o, seed=0, name=name, options=options: run_plm_variant(
                name, options, p, q, o, note + (f" + {options}" if options else ""), seed, SWEEP_SCALE
            ),
        )
        for name, options in variants
    ]


def plm_defaults() -> dict:
    """Every PLM option's value in the preset (the method's defaults where the preset is silent)."""
    import dataclasses

    from dmlkit.methods.plm import PLMConfig

    return {**{f.name: f.default for f in dataclasses.fields(PLMConfig)}, **preset_options()}


def sweep_points(rows: list[dict], metric: str = "recall@1") -> dict[str, list[tuple[float, float, float, int]]]:
    """``plm_sweep.sweep_points`` with this preset's defaults."""
    return plm_sweep.sweep_points(rows, plm_defaults(), metric)


def sweep_figure(rows: list[dict], path: Path) -> Path | None:
    """``plm_sweep.sweep_figure`` with this preset's defaults."""
    return plm_sweep.sweep_figure(rows, path, plm_defaults())


def parse_variant(text: str) -> tuple[str, object]:
    """``"delta=1.0"`` -> ``("delta", 1.0)``; the option must be a PLM option (YAML value syntax)."""
    import yaml

    from dmlkit.methods.plm import PLMConfig

    option, sep, value = text.partition("=")
    if not sep or option not in PLMConfig.__dataclass_fields__:
        raise SystemExit(f"--variant needs OPTION=VALUE with a PLM option (e.g. delta=1.0), got {text!r}")
    return option, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 epoch on a 3,000-image subset, 1,000 test images"
    )
    parser.add_argument("--only", choices=ROWS, action="append", help="run only this row (repeatable)")
    parser.add_argument(
        "--protocol", choices=tuple(PROTOCOLS), action="append", help="only this protocol (repeatable)"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="Figure 3 one-at-a-time sweeps on the zero-shot protocol"
    )
    parser.add_argument(
        "--variant",
        action="append",
        metavar="OPTION=VALUE",
        help="also run PLM with one option changed, as row plm[OPTION=VALUE] on the chosen protocols (repeatable)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one run per seed for the PLM rows and variants (default: 0); the others run once, seed 0",
    )
    parser.add_argument("--out", default="runs/benchmarks/plm", help="where the run directories go")
    parser.add_argument("--ssl-init", metavar="RUN", help="start the PLM rows and variants from this finished "
                        "label-free run's backbone (as the paper starts from ImageNet weights); rows get [ssl-init]")
    args = parser.parse_args(argv)
    out_root = Path(args.out) / ("quick" if args.quick else "full")
    start = None
    if args.ssl_init:
        out_root.mkdir(parents=True, exist_ok=True)
        start = {"pretrained": str(backbone_weights_of_run(Path(args.ssl_init), out_root / "ssl-init-backbone.pt"))}
    rows = []
    jobs = [
        (name, protocol, runner(name, start))
        for protocol in args.protocol or PROTOCOLS
        for name in args.only or (() if args.variant or args.sweep else ROWS)  # --variant / --sweep alone: only their rows
    ]
    for variant in args.variant or ():
        option, value = parse_variant(variant)
        jobs += [variant_job(option, value, protocol, start) for protocol in args.protocol or PROTOCOLS]
    if args.sweep:
        jobs += sweep_jobs()
    for name, protocol_name, run in jobs:
        seeded = name.startswith("plm")
        for seed in args.seeds if seeded else [0]:
            print(f"[plm benchmark] {name} / {protocol_name} / seed {seed}{' (quick)' if args.quick else ''}", flush=True)
            extra = {"seed": seed} if seeded else {}
            rows.append(run(protocol_name, args.quick, out_root, **extra))
            save([rows[-1]])
    print(table(rows))
    if args.sweep and not args.quick:
        figure = sweep_figure(load_results("plm")["rows"], results_path("plm").with_name("plm_sweep.png"))
        print(f"[plm benchmark] Figure 3 sweep: {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
