"""benchmarks/_common.py: results rows are replaced by key and the file is rewritten whole."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parent.parent / "benchmarks" / "_common.py"


@pytest.fixture()
def common(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_common", COMMON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS_DIR", tmp_path)
    return module


def test_save_rows_replaces_matching_rows_and_keeps_others(common, tmp_path):
    row = {"method": "m", "dataset": "d", "protocol": "p", "seed": 0, "metrics": {"recall@1": 0.1}, "seconds": 1.0}
    common.save_rows("demo", [row, {**row, "seed": 1}])
    data = common.save_rows("demo", [{**row, "metrics": {"recall@1": 0.9}}])
    assert [(r["seed"], r["metrics"]["recall@1"]) for r in data["rows"]] == [(1, 0.1), (0, 0.9)]
    on_disk = json.loads((tmp_path / "demo.json").read_text())
    assert on_disk == data and {"benchmark", "machine", "commit", "date"} <= set(on_disk)
    assert not list(tmp_path.glob("*.tmp"))


def test_markdown_table(common):
    table = common.markdown_table([{"a": 1, "b": 0.123456, "c": None}], ["a", ("B", "b"), ("twice a", lambda r: 2 * r["a"]), "c"],
                                  digits=2)
    assert table.splitlines() == ["| a | B | twice a | c |", "|---|---|---|---|", "| 1 | 0.12 | 2 | – |"]
