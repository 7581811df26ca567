"""benchmarks/stml.py --seeds: one stml run per seed, each saved under its own (method, protocol, seed) key;
the untrained network and raw pixels run once."""
from __future__ import annotations

import sys

import pytest


@pytest.fixture()
def bench(load_benchmark, monkeypatch):
    module = load_benchmark("stml.py")
    monkeypatch.setattr(module, "similarity_overhead", dict)  # times a real iteration otherwise
    monkeypatch.setattr(module, "nmi_over_kmeans_seeds", lambda run_dir: {})  # loads a real run otherwise
    return module


def test_seeds_give_one_stml_row_each_and_initial_once(bench, tmp_path, monkeypatch):
    calls = []

    def train(method, dataset, out, **settings):
        calls.append((method, settings["seed"], out.rsplit("/", 1)[-1]))
        r1 = 0.5 + 0.1 * settings["seed"]
        return {"test": {"recall@1": r1, "nmi": 0.4}, "seconds": 2.0, "config": {"epochs": 1},
                "images_per_second": 10.0, "best": {"epoch": 1}}

    monkeypatch.setattr(bench.dmlkit, "train", train)
    argv = ["--quick", "--only", "stml", "--only", "initial", "--protocol", "zero-shot", "--seeds", "0", "1", "2",
            "--out", str(tmp_path / "runs")]
    assert bench.main(argv) == 0
    assert calls == [("stml", 0, "stml-zero-shot"), ("stml", 1, "stml-zero-shot-seed1"),
                     ("stml", 2, "stml-zero-shot-seed2"), ("initial", 0, "initial-zero-shot")]
    rows = sys.modules["_common"].load_results("stml")["rows"]
    assert sorted((r["method"], r["seed"], r["metrics"]["recall@1"]) for r in rows) == [
        ("initial", 0, 0.5), ("stml", 0, 0.5), ("stml", 1, 0.6), ("stml", 2, pytest.approx(0.7))]
