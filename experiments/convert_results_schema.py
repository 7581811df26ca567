"""Converted the pre-harness results files (one flat row per seed, each script its own extras) to the one
row schema of ``benchmarks/harness.py`` (run once on 2026-12-03; the tables of docs/results.md stayed the same).

    python experiments/convert_results_schema.py benchmarks/results/stml.json ...

Each flat row becomes a seed of its (method, dataset, protocol, quick) row: metrics as mean and sample std,
the seed's own numbers and extras under ``per_seed``, and the file's machine, commit and date on every seed
(the old files kept them once per file). Files already in the schema, and files whose rows name no method
(``cpu_settings.json``: rows keyed by setting), are left as they are.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _common import schema_rows

#: rows named after a variant: the dmlkit method they ran (others: the name before any ``[...]``)
BASE_METHODS = {"plm-no-selection": "plm", "plm-binary": "plm", "plm-sweep": "plm", "ssdml-no-orth": "ssdml",
                "instance-moco": "instance", "slade-teacher": "slade", "slade-round-1": "slade",
                "slade-round-2": "slade", "slade-all-pairs": "slade", "slade-no-basis": "slade",
                "slade-select-both": "slade", "initial[pixels]": "raw-pixels"}


def base_method(row: dict) -> str:
    name = row["method"]
    return row.get("base_method") or BASE_METHODS.get(name) or BASE_METHODS.get(name.split("[")[0]) or name.split("[")[0]


def convert(path: Path) -> bool:
    data = json.loads(path.read_text())
    rows = data.get("rows", [])
    if not rows or any("per_seed" in r for r in rows) or not all("method" in r for r in rows):
        return False
    where = {k: data[k] for k in ("machine", "commit", "date") if k in data}
    data["rows"] = schema_rows({**where, **r, "base_method": base_method(r)} for r in rows)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return True


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(name, "converted" if convert(Path(name)) else "left as it is")
