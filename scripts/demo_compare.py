"""Print two runs' test metrics side by side: ``python scripts/demo_compare.py INITIAL_RUN TRAINED_RUN``.

The demo's last step: the initial embedding (ImageNet Lite0, no training) against STML trained from it,
with their difference, for R@1, MAP@R and NMI. Both runs must have been evaluated on the same test set.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = (("R@1", "recall@1"), ("MAP@R", "map@r"), ("NMI", "nmi"))


def read_run(run_dir: Path) -> dict:
    """``metrics.json`` of a finished run, with a one-line error naming what is missing."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise SystemExit(f"demo_compare: no metrics.json in {run_dir}; did its `dmlkit train` finish?")
    return json.loads(path.read_text())


def compare(initial: dict, trained: dict) -> str:
    """A markdown table: metric | initial | trained | difference (trained - initial)."""
    sizes = {run["config"].get("test_subset") for run in (initial, trained)}
    datasets = {run["config"].get("dataset") for run in (initial, trained)}
    if len(sizes) != 1 or len(datasets) != 1:
        raise SystemExit(f"demo_compare: the runs were evaluated on different test sets ({datasets}, {sizes})")
    name = trained["method"].upper() if trained["method"] in ("stml", "plm", "slade", "drml") else trained["method"]
    lines = [f"| {datasets.pop()} test split | initial | {name} | difference |", "|---|---|---|---|"]
    for label, key in ROWS:
        before, after = float(initial["test"][key]), float(trained["test"][key])
        lines.append(f"| {label} | {before:.3f} | {after:.3f} | {after - before:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python scripts/demo_compare.py INITIAL_RUN TRAINED_RUN", file=sys.stderr)
        return 2
    initial, trained = (read_run(Path(a)) for a in args)
    print(compare(initial, trained))
    return 0


if __name__ == "__main__":
    sys.exit(main())
