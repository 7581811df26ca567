"""benchmarks/unsupervised_baselines.py: --only / --protocol / --seeds pick the runs, every row is saved under
its own key in the stml.py schema, a failing row does not lose the others, the table averages seeds."""
from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(load_benchmark):
    return load_benchmark("unsupervised_baselines.py")


def test_rows_per_seed_and_protocol_in_the_stml_schema(bench, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(method, dataset, out, **settings):
        calls.append((method, settings["preset"], settings["protocol"], settings["seed"], settings.get("epochs")))
        if settings["seed"] == 2:
            raise RuntimeError("boom")
        r1 = 0.5 + 0.1 * settings["seed"]
        metrics = {"recall@1": r1, "recall@2": 0.7, "recall@4": 0.8, "recall@8": 0.9, "nmi": 0.4,
                   "precision@1": r1, "r_precision": 0.3, "map@r": 0.2}
        return {"test": metrics, "seconds": 3.0, "config": {"epochs": settings.get("epochs", 10)},
                "images_per_second": 100.0, "best": {"epoch": 1}}

    monkeypatch.setattr(bench.dmlkit, "train", fake_train)
    code = bench.main(["--quick", "--only", "deepcluster", "--protocol", "zero-shot", "--seeds", "0", "1", "2",
                       "--out", str(tmp_path / "runs")])
    assert code == 0
    assert calls == [("deepcluster", "deepcluster-fashion-mnist", "zero-shot", s, 1) for s in (0, 1, 2)]
    saved = json.loads((tmp_path / "unsupervised_baselines.json").read_text())
    assert [(r["method"], r["protocol"], r["seed"]) for r in saved["rows"]] == [("deepcluster", "zero-shot", 0),
                                                                              ("deepcluster", "zero-shot", 1)]
    row = saved["rows"][0]
    assert {"method", "dataset", "protocol", "metrics", "seconds", "seed", "notes", "quick"} <= set(row)
    assert row["dataset"] == "fashion-mnist" and set(row["metrics"]) == set(bench.METRICS)
    printed = capsys.readouterr().out
    assert "failed" in printed and "0.5500 ± 0.0707" in printed  # mean ± sample std of R@1 over seeds 0, 1


def test_default_rows_are_deepcluster_and_instance_on_both_protocols(bench, tmp_path, monkeypatch):
    seen = []

    def fake_train(method, dataset, out, **settings):
        seen.append((method, settings["protocol"]))
        return {"test": {"recall@1": 0.5}, "seconds": 1.0, "config": {"epochs": 10}}

    monkeypatch.setattr(bench.dmlkit, "train", fake_train)
    assert bench.main(["--out", str(tmp_path / "runs")]) == 0
    assert seen == [("deepcluster", "standard"), ("instance", "standard"),
                    ("deepcluster", "zero-shot"), ("instance", "zero-shot")]
