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


def test_ssl_init_starts_the_plm_rows_from_the_runs_backbone(bench, tmp_path, monkeypatch):
    """--ssl-init: the label-free run's backbone is written once and passed as ``pretrained`` to the PLM row
    and the variant, whose names get the suffix [ssl-init]; raw pixels and STML are not PLM rows."""
    import torch

    run = tmp_path / "stml-run"
    (run / "checkpoints").mkdir(parents=True)
    weights = {"method.backbone.conv.weight": torch.ones(2, 1, 3, 3)}
    torch.save({"state_dict": {**weights, "method.f.weight": torch.zeros(4, 2)}}, run / "checkpoints" / "last.ckpt")
    calls = []
    monkeypatch.setattr(bench.dmlkit, "train", _fake_train(calls))
    out = tmp_path / "runs"
    assert bench.main(["--quick", "--ssl-init", str(run), "--only", "plm", "--protocol", "unsupervised",
                       "--variant", "delta=1.0", "--out", str(out)]) == 0
    written = out / "quick" / "ssl-init-backbone.pt"
    assert list(torch.load(written, weights_only=True)) == ["conv.weight"]
    assert [options.get("pretrained") for _, _, options in calls] == [str(written)] * 2
    assert calls[1][2]["delta"] == 1.0
    rows = sys.modules["_common"].load_results("plm")["rows"]
    assert sorted(r["method"] for r in rows) == ["plm[delta=1.0][ssl-init]", "plm[ssl-init]"]


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


def test_sweep_runs_figure_3_at_sweep_scale_and_draws_it(bench, tmp_path, monkeypatch):
    """--sweep: the defaults plus one option at a time, zero-shot, at SWEEP_SCALE, one run per seed; the
    figure's points are the mean and std over seeds of each value (the defaults' rows at the preset's value)."""
    calls, settings_seen = [], []
    fake = _fake_train(calls)

    def train(method, dataset, out, **settings):
        settings_seen.append(settings)
        result = fake(method, dataset, out, **settings)
        value = settings["options"].get("n_proxies", 100)
        result["test"] = {**result["test"], "recall@1": 0.5 + value / 1000 + settings["seed"] / 100}
        return result

    monkeypatch.setattr(bench.dmlkit, "train", train)
    assert bench.main(["--sweep", "--seeds", "0", "1", "--out", str(tmp_path / "runs")]) == 0
    variants = 1 + sum(len(v) for v in bench.SWEEP.values())
    assert len(calls) == 2 * variants  # --sweep alone: every sweep run on two seeds, no other row
    sweep_settings = [s for s in settings_seen if s.get("epochs") == bench.SWEEP_SCALE["epochs"]]
    assert len(sweep_settings) == 2 * variants
    assert all(s["train_subset"] == bench.SWEEP_SCALE["train_subset"] for s in sweep_settings)
    rows = sys.modules["_common"].load_results("plm")["rows"]
    points = bench.sweep_points(rows)
    assert [p[0] for p in points["n_proxies"]] == [10.0, 100.0, 300.0]
    value, mean, std, runs = points["n_proxies"][0]
    assert value == 10.0
    assert runs == 2 and mean == pytest.approx(0.5 + 0.01 + 0.005) and std == pytest.approx(0.005)
    assert points["piece_dim"] == [(2.0, pytest.approx(0.605), pytest.approx(0.005), 2),
                                   (3.0, pytest.approx(0.605), pytest.approx(0.005), 2),
                                   (5.0, pytest.approx(0.605), pytest.approx(0.005), 2)]
    assert (tmp_path / "plm_sweep.png").stat().st_size > 0
