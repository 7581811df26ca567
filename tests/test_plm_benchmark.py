"""benchmarks/plm.py --variant: one PLM option changed, rows named plm[OPTION=VALUE], only those rows run,
the option reaches dmlkit.train, and a misspelt option is refused before anything trains."""
from __future__ import annotations

import sys

import pytest


@pytest.fixture()
def bench(load_benchmark, monkeypatch):
    module = load_benchmark("plm.py")
    monkeypatch.setattr(module, "piece_overhead", lambda options: {})  # times a real iteration otherwise
    return module


def _fake_train(calls):
    def train(method, dataset, out, **settings):
        calls.append((method, settings["protocol"], dict(settings["options"])))
        metrics = {"recall@1": 0.5, "recall@2": 0.6, "recall@4": 0.7, "recall@8": 0.8, "nmi": 0.4,
                   "precision@1": 0.5, "r_precision": 0.3, "map@r": 0.2}
        return {"test": metrics, "seconds": 2.0, "config": {"epochs": 1}, "best": {"epoch": 1}}

    return train


def test_variant_alone_runs_only_its_rows_with_the_option(bench, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench.dmlkit, "train", _fake_train(calls))
    assert bench.main(["--quick", "--variant", "delta=1.0", "--out", str(tmp_path / "runs")]) == 0
    assert [(m, p) for m, p, _ in calls] == [("plm", "standard"), ("plm", "zero-shot")]
    preset = bench.preset_options()
    for _, _, options in calls:
        assert options == {**preset, "delta": 1.0}
    rows = sys.modules["_common"].load_results("plm")["rows"]
    assert sorted((r["method"], r["protocol"]) for r in rows) == [
        ("plm[delta=1.0]", "unsupervised"),
        ("plm[delta=1.0]", "zero-shot"),
    ]


def test_variant_parsing(bench):
    assert bench.parse_variant("delta=0.5") == ("delta", 0.5)
    assert bench.parse_variant("selection=false") == ("selection", False)
    assert bench.parse_variant("piece_dim=5") == ("piece_dim", 5)
    for bad in ("delta", "deltaa=1", "=1"):
        with pytest.raises(SystemExit, match="OPTION=VALUE"):
            bench.parse_variant(bad)


def test_seeds_run_the_plm_rows_once_per_seed_and_keep_each_row(bench, tmp_path, monkeypatch):
    seeds, dirs = [], []

    def train(method, dataset, out, **settings):
        seeds.append((method, settings["seed"]))
        dirs.append(out.rsplit("/", 1)[-1])
        return _fake_train([])(method, dataset, out, **settings)

    monkeypatch.setattr(bench.dmlkit, "train", train)
    monkeypatch.setattr(bench, "run_raw_pixels", lambda protocol, quick, out: bench.row(
        "raw-pixels", protocol, {"recall@1": 0.8}, 1.0, "", quick))
    argv = ["--quick", "--only", "plm", "--only", "raw-pixels", "--protocol", "zero-shot", "--seeds", "0", "2",
            "--out", str(tmp_path / "runs")]
    assert bench.main(argv) == 0
    assert seeds == [("plm", 0), ("plm", 2)]
    assert dirs == ["plm-zero-shot", "plm-zero-shot-seed2"]
    rows = sys.modules["_common"].load_results("plm")["rows"]
    assert sorted((r["method"], r["seed"]) for r in rows) == [("plm", 0), ("plm", 2), ("raw-pixels", 0)]
