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


def _save_many(path: str, worker: int, count: int) -> None:
    spec = importlib.util.spec_from_file_location("bench_common_worker", COMMON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.RESULTS_DIR = Path(path)
    module.machine = module.commit = lambda: "test"  # keep each save short: the race is in the file
    padding = "x" * 20_000  # a larger file widens each read-modify-write, as real results files do
    for i in range(count):
        module.save_rows("race", [{"method": f"w{worker}", "dataset": "d", "protocol": "p", "seed": i, "notes": padding}])


def test_processes_saving_at_once_keep_every_row(tmp_path):
    """Two processes each save 100 rows into one results file at the same time: all 200 survive."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_many, args=(str(tmp_path), w, 100)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    rows = json.loads((tmp_path / "race.json").read_text())["rows"]
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted((f"w{w}", i) for w in range(2) for i in range(100))
    assert not list(tmp_path.glob("*.tmp"))


def _seed_row(method, seed, r1, **extra):
    return {"method": method, "dataset": "d", "protocol": "p", "seed": seed, "seconds": 10.0 * (seed + 1),
            "metrics": {"recall@1": r1}, "notes": "n", **extra}


def test_schema_rows_group_seeds_and_flat_rows_undo_it(common):
    flat = [_seed_row("a", 0, 0.5, epochs=3), _seed_row("a", 1, 0.7, epochs=4), _seed_row("a", 2, 0.6, epochs=5),
            _seed_row("a", 0, 0.1, quick=True), _seed_row("b", 0, 0.9, notes="other")]
    rows = common.schema_rows(flat)
    a, a_quick, b = rows
    assert a["seeds"] == [0, 1, 2] and a["metrics"]["recall@1"] == pytest.approx(0.6)
    assert a["metrics"]["recall@1_std"] == pytest.approx(0.1) and a["seconds"] == pytest.approx(20.0)
    assert a["notes"] == "n" and [s["epochs"] for s in a["per_seed"]] == [3, 4, 5] and not a["quick"]
    assert a_quick["quick"] and a_quick["metrics"]["recall@1_std"] == 0.0 and b["notes"] == "other"
    back = [{k: v for k, v in r.items() if k != "seeds"} for r in common.flat_rows(rows)]
    assert common.schema_rows(back) == rows


def test_save_seed_rows_replaces_one_seed_and_keeps_the_others(common, tmp_path):
    common.save_seed_rows("demo", [_seed_row("a", 0, 0.5), _seed_row("a", 1, 0.7)])
    data = common.save_seed_rows("demo", [_seed_row("a", 1, 0.9), _seed_row("a", 2, 0.4)])
    (row,) = data["rows"]
    assert row["seeds"] == [0, 1, 2] and row["metrics"]["recall@1"] == pytest.approx(0.6)
    assert json.loads((tmp_path / "demo.json").read_text()) == data
