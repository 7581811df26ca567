"""Draw a sheet of the glyphs dataset: 16 random classes, 16 random instances (font faces) each.

    python scripts/glyphs_sheet.py [--variant glyphs] [--out docs/glyphs_sheet.png] [--seed 0]

Each row is one class; its name (the character and its code points) is written at the left in
DejaVu Sans, which has the characters of the alphabetic scripts.
"""
from __future__ import annotations

import argparse
import io
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from dmlkit.data import load_records
from dmlkit.engine.checkpoint import atomic_write_bytes


def draw_sheet(variant: str, out: str, seed: int = 0, rows: int = 16, cols: int = 16, root: str | None = None) -> None:
    records = load_records(variant, root)
    rng = np.random.default_rng(seed)
    classes = np.sort(rng.choice(int(records.labels.max()) + 1, rows, replace=False))
    fig, axes = plt.subplots(rows, cols + 1, figsize=(cols * 0.7 + 3.0, rows * 0.72),
                             gridspec_kw={"width_ratios": [4.2] + [1.0] * cols})
    for r, c in enumerate(classes):
        members = np.flatnonzero(records.labels == c)
        picked = np.sort(rng.choice(members, min(cols, len(members)), replace=False))
        axes[r, 0].text(0.0, 0.5, records.class_names[c], fontsize=11, va="center", family="DejaVu Sans")
        for k in range(cols + 1):
            axes[r, k].axis("off")
        for k, i in enumerate(picked):
            axes[r, k + 1].imshow(255 - records.images[i, 0], cmap="gray", vmin=0, vmax=255)
    fig.suptitle(f"{variant}: {rows} random classes (rows) x {cols} random font faces", fontsize=12)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.96, bottom=0.01, wspace=0.05, hspace=0.1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="glyphs")
    parser.add_argument("--out", default="docs/glyphs_sheet.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root")
    args = parser.parse_args(argv)
    draw_sheet(args.variant, args.out, args.seed, root=args.data_root)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
