"""How sensitive is PLM to N_ρ, m, N_α and δ on Fashion-MNIST (the paper's Figure 3, at a reduced scale)?

Draws Recall@1 (mean ± std over seeds) against each option from the ``plm-sweep*`` rows of
``benchmarks/results/plm.json`` (the ``plm`` suite: ``python -m benchmarks --suite plm --only plm-sweep ...``)
into ``experiments/results/plm_sweep.png``. The sweeps change one option at a time from the preset (Sec. 4.1:
N_ρ 100, m 3, N_α 4, δ 2); row ``plm-sweep[option=value]``, ``plm-sweep`` being the preset itself.

    python experiments/plm_sweep.py
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import EXPERIMENT_RESULTS_DIR, RESULTS_DIR, flat_rows

#: the options swept (their values: the rows present)
SWEEP = ("n_proxies", "piece_dim", "n_alpha", "delta")
SWEEP_LABELS = {"n_proxies": "N_ρ (proxies)", "piece_dim": "m (piece dimension)", "n_alpha": "N_α", "delta": "δ"}
SWEEP_SCALE = {"train_subset": 12000, "epochs": 2}
SWEEP_BASE = "plm-sweep"


def sweep_points(
    rows: list[dict], defaults: dict, metric: str = "recall@1"
) -> dict[str, list[tuple[float, float, float, int]]]:
    """Per swept option, ``[(value, mean, std, runs)]`` sorted by value, from the ``plm-sweep*`` rows (full
    runs only); the ``plm-sweep`` rows give each option's point at its value in ``defaults`` (the preset's)."""
    grouped: dict[str, dict[float, list[float]]] = {option: {} for option in SWEEP}
    for r in rows:
        method = r["method"]
        if r.get("quick") or r["protocol"] != "zero-shot" or not method.startswith(SWEEP_BASE):
            continue
        if method == SWEEP_BASE:  # the preset: a point on every option's curve
            for option in SWEEP:
                grouped[option].setdefault(float(defaults[option]), []).append(r["metrics"][metric])
            continue
        option, _, value = method[len(SWEEP_BASE) + 1 : -1].partition("=")
        if option in grouped:
            grouped[option].setdefault(float(value), []).append(r["metrics"][metric])
    return {
        option: [(v, float(np.mean(x)), float(np.std(x)), len(x)) for v, x in sorted(values.items())]
        for option, values in grouped.items()
        if values
    }


def sweep_figure(rows: list[dict], path: Path, defaults: dict) -> Path | None:
    """Recall@1 (mean ± std over seeds) against each swept option, one panel each; None without rows."""
    from dmlkit.viz.plots import new_figure
    from dmlkit.viz.plots import save as save_figure

    points = sweep_points(rows, defaults)
    if not points:
        return None
    fig = new_figure(3.2 * len(points), 3.0)
    axes = fig.subplots(1, len(points), squeeze=False)[0]
    untrained = [r["metrics"]["recall@1"] for r in rows
                 if r["method"] == "initial" and r["protocol"] == "zero-shot" and not r.get("quick")]
    for ax, (option, series) in zip(axes, points.items()):
        x, mean, std = (np.array([p[i] for p in series]) for i in range(3))
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label="PLM")
        if untrained:
            ax.axhline(untrained[0], color="tab:gray", linestyle="--", label="untrained network")
        ax.axvline(float(defaults[option]), color="0.8", linestyle=":", zorder=0)
        ax.set_xlabel(SWEEP_LABELS[option])
        ax.set_ylabel("Recall@1")
    axes[0].legend(fontsize=8)
    runs = max(p[3] for series in points.values() for p in series)
    fig.suptitle(f"PLM, Fashion-MNIST zero-shot (sweep scale {SWEEP_SCALE}); mean ± std over {runs} seed(s)")
    return save_figure(fig, path)


def plm_defaults(preset: str = "plm-fashion-mnist") -> dict:
    """Every PLM option's value in the preset (the method's defaults where the preset is silent)."""
    from dmlkit.engine.config import load_preset
    from dmlkit.methods.plm import PLMConfig

    return {**{f.name: f.default for f in dataclasses.fields(PLMConfig)}, **(load_preset(preset).get("options") or {})}


if __name__ == "__main__":
    results = flat_rows(json.loads((RESULTS_DIR / "plm.json").read_text())["rows"])
    print(sweep_figure(results, EXPERIMENT_RESULTS_DIR / "plm_sweep.png", plm_defaults()))
