"""Does SSDML converge on Fashion-MNIST, and how does the mining angle α change it (seed 002 Figure 2 left and middle)?

Draws, from the ``ssdml`` suite's rows of ``benchmarks/results/ssdml.json`` (each seed's evaluated epochs under
``per_seed[].history``), test Recall@1 per epoch of ``ssdml`` and ``ssdml-no-orth`` into
``experiments/results/ssdml_convergence.png`` and final Recall@1 against α of the ``ssdml[alpha=…]`` rows into
``experiments/results/ssdml_alpha.png``. The seed plots Cars-196; these are Fashion-MNIST with 10 labels per class.

    python -m benchmarks --suite ssdml --only ssdml ssdml-no-orth 'ssdml[alpha=35]' ...   # the rows
    python experiments/ssdml_figures.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import EXPERIMENT_RESULTS_DIR, RESULTS_DIR

CURVES = ("ssdml", "ssdml-no-orth")


def convergence(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """``{row: [(epoch, recall@1)]}`` of the first seed of each ``CURVES`` row (full runs only)."""
    return {r["method"]: [(h["epoch"], h["recall@1"]) for h in r["per_seed"][0].get("history") or []]
            for r in rows if r["method"] in CURVES and not r["quick"]}


def alpha_points(rows: list[dict]) -> list[tuple[float, float]]:
    """``[(alpha_deg, recall@1)]`` of the ``ssdml[alpha=…]`` rows, sorted by α."""
    return sorted((r["options"]["alpha_deg"], r["metrics"]["recall@1"]) for r in rows
                  if r["method"].startswith("ssdml[alpha=") and not r["quick"])


def _figure(path: Path, title: str, draw) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    draw(ax)
    ax.set_ylabel("test Recall@1")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    rows = json.loads((RESULTS_DIR / "ssdml.json").read_text())["rows"]

    def curves(ax) -> None:
        for name, points in convergence(rows).items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_xlabel("epoch")

    def alpha(ax) -> None:
        points = alpha_points(rows)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_xlabel("α (degrees)")

    print(_figure(EXPERIMENT_RESULTS_DIR / "ssdml_convergence.png", "SSDML convergence (Fashion-MNIST)", curves))
    print(_figure(EXPERIMENT_RESULTS_DIR / "ssdml_alpha.png", "SSDML: sensitivity to α (Fashion-MNIST)", alpha))


if __name__ == "__main__":
    main()
