"""benchmarks/harness.py: suites as data, one row per entry with mean ± sample std over seeds, one schema."""
from __future__ import annotations

import json

import pytest

FAKE = {0: 0.50, 1: 0.70, 2: 0.60}  # recall@1 per seed


def _fake_runner(entry, seed, quick):
    value = FAKE[seed] - (0.1 if quick else 0.0)
    return {"recall@1": value, "nmi": 0.4, "map@r": 0.2, "recall@2": value}, 10.0 + seed


def _suite(harness):
    return harness.Suite("toy", "a toy suite", (
        harness.Entry("stml", "stml", "glyphs", seeds=(0, 1, 2), options={"sigma": 3}),
        harness.Entry("raw-pixels", harness.RAW_PIXELS, "glyphs"),
    ))


def test_rows_carry_mean_sample_std_and_seeds(load_benchmark, tmp_path):
    harness = load_benchmark("harness.py")
    rows = harness.run_suite(_suite(harness), runner=_fake_runner, runs_root=tmp_path)
    stml, pixels = rows
    assert stml["seeds"] == [0, 1, 2] and stml["method"] == "stml" and stml["dataset"] == "glyphs"
    assert stml["metrics"]["recall@1"] == pytest.approx(0.6)  # (0.5 + 0.7 + 0.6) / 3
    assert stml["metrics"]["recall@1_std"] == pytest.approx(0.1)  # sample std of 0.5, 0.7, 0.6
    assert stml["metrics"]["nmi_std"] == 0.0 and stml["seconds"] == pytest.approx(11.0)
    assert [r["seed"] for r in stml["per_seed"]] == [0, 1, 2]
    assert pixels["seeds"] == [0] and pixels["metrics"]["recall@1_std"] == 0.0
    saved = json.loads((tmp_path / "toy.json").read_text())  # load_benchmark redirects RESULTS_DIR to tmp_path
    assert {"benchmark", "machine", "commit", "date", "rows"} <= set(saved)
    assert [r["method"] for r in saved["rows"]] == ["stml", "raw-pixels"]


def test_rerun_replaces_its_own_seeds_and_quick_rows_stay_apart(load_benchmark, tmp_path):
    harness = load_benchmark("harness.py")
    suite = _suite(harness)
    harness.run_suite(suite, runner=_fake_runner, runs_root=tmp_path, seeds=[0])
    harness.run_suite(suite, runner=_fake_runner, runs_root=tmp_path, quick=True, only=["stml"])

    def second_runner(entry, seed, quick):  # seed 1 measured again, differently
        metrics, seconds = _fake_runner(entry, seed, quick)
        return {**metrics, "recall@1": 0.9}, seconds

    harness.run_suite(suite, runner=second_runner, runs_root=tmp_path, seeds=[1, 2], only=["stml"])
    rows = json.loads((tmp_path / "toy.json").read_text())["rows"]
    full = [r for r in rows if r["method"] == "stml" and not r["quick"]]
    quick = [r for r in rows if r["method"] == "stml" and r["quick"]]
    assert len(full) == 1 and full[0]["seeds"] == [0, 1, 2]  # seed 0 kept from the first run
    assert full[0]["metrics"]["recall@1"] == pytest.approx((0.5 + 0.9 + 0.9) / 3)
    assert len(quick) == 1 and quick[0]["metrics"]["recall@1"] == pytest.approx(0.5)  # seeds 0-2, each 0.1 lower


def test_changed_entry_starts_its_row_afresh(load_benchmark, tmp_path):
    harness = load_benchmark("harness.py")
    harness.run_suite(_suite(harness), runner=_fake_runner, runs_root=tmp_path, only=["stml"])
    changed = harness.Suite("toy", "a toy suite", (harness.Entry("stml", "stml", "glyphs", options={"sigma": 2}),))
    harness.run_suite(changed, runner=_fake_runner, runs_root=tmp_path, seeds=[1])
    (row,) = json.loads((tmp_path / "toy.json").read_text())["rows"]
    assert row["seeds"] == [1] and row["metrics"]["recall@1"] == pytest.approx(0.7)


def test_a_saved_row_survives_an_interrupted_entry(load_benchmark, tmp_path):
    harness = load_benchmark("harness.py")

    def dies_on_seed_2(entry, seed, quick):
        if seed == 2:
            raise KeyboardInterrupt
        return _fake_runner(entry, seed, quick)

    with pytest.raises(KeyboardInterrupt):
        harness.run_suite(_suite(harness), runner=dies_on_seed_2, runs_root=tmp_path)
    (row,) = json.loads((tmp_path / "toy.json").read_text())["rows"]
    assert row["seeds"] == [0, 1] and row["metrics"]["recall@1"] == pytest.approx(0.6)


def test_reuse_reads_a_finished_run_only_when_its_configuration_matches(load_benchmark, tmp_path):
    harness = load_benchmark("harness.py")
    settings = {"protocol": "standard", "seed": 0, "epochs": 2, "options": {"backbone": "mnist-net"}}
    from dmlkit.engine.config import resolve_config

    config = resolve_config({"method": "stml", "dataset": "fashion-mnist", **settings}).to_dict()
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"recall@1": 0.5}, "seconds": 3.0, "config": config}))
    assert harness.finished_run(tmp_path, settings, "stml", "fashion-mnist")["seconds"] == 3.0
    assert harness.finished_run(tmp_path, {**settings, "seed": 1}, "stml", "fashion-mnist") is None
    assert harness.finished_run(tmp_path, {**settings, "options": {"backbone": "mnist-net", "sigma": 2.0}},
                                "stml", "fashion-mnist") is None
    assert harness.finished_run(tmp_path / "absent", settings, "stml", "fashion-mnist") is None


def test_settings_and_unknown_rows(load_benchmark, tmp_path):
    harness = load_benchmark("harness.py")
    entry = harness.Entry("stml-512", "stml", "glyphs", "zero-shot", preset="stml-glyphs", settings={"epochs": 3},
                          options={"embedding_dim": 512}, quick={"epochs": 1, "train_subset": 100})
    full, quick = harness.train_settings(entry, 2, False), harness.train_settings(entry, 2, True)
    assert full["epochs"] == 3 and quick["epochs"] == 1 and quick["train_subset"] == 100 and "train_subset" not in full
    assert full["seed"] == 2 and full["protocol"] == "zero-shot" and full["preset"] == "stml-glyphs"
    assert full["options"] == {"embedding_dim": 512}
    with pytest.raises(SystemExit, match="no row.*nope"):
        harness.run_suite(_suite(harness), runner=_fake_runner, runs_root=tmp_path, only=["nope"])


def test_declared_suites_are_well_formed(load_benchmark):
    load_benchmark("harness.py")
    suites = load_benchmark("suites.py").SUITES
    for name, suite in suites.items():
        assert suite.name == name and suite.entries
        keys = [(e.row, e.dataset, e.protocol) for e in suite.entries]
        assert len(keys) == len(set(keys)), f"suite {name} repeats a row"


def test_raw_pixels_rows_run_on_the_threads_setting(load_benchmark):
    import torch

    harness = load_benchmark("harness.py")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        entry = harness.Entry("raw-pixels", harness.RAW_PIXELS, "digits", settings={"threads": 1})
        metrics, _ = harness.run_raw_pixels(entry, 0, False)
        assert torch.get_num_threads() == 1 and 0.5 < metrics["recall@1"] <= 1.0
    finally:
        torch.set_num_threads(before)


def test_mlrc_rows_report_the_validation_selected_epoch(load_benchmark):
    harness = load_benchmark("harness.py")
    last = {"recall@1": 0.5}
    chosen = {"epoch": 2, "selected_on": "validation map@r", "recall@1": 0.6}
    assert harness.reported_metrics({"test": last, "best": chosen}) == {"recall@1": 0.6}
    on_test = {**chosen, "selected_on": "test recall@1 (best-on-test, for reproduction only)"}
    assert harness.reported_metrics({"test": last, "best": on_test}) == last


def test_quick_options_add_to_the_entry_options_and_label_names_the_protocol(load_benchmark, tmp_path):
    harness = load_benchmark("harness.py")
    entry = harness.Entry("ssdml", "ssdml", "fashion-mnist", label="semi-supervised-10-per-class",
                          options={"alpha_deg": 35.0}, quick={"epochs": 2, "options": {"n_unlabeled_partition": 1500}})
    assert harness.train_settings(entry, 0, True)["options"] == {"alpha_deg": 35.0, "n_unlabeled_partition": 1500}
    assert harness.train_settings(entry, 0, False)["options"] == {"alpha_deg": 35.0}
    (row,) = harness.run_suite(harness.Suite("toy", "", (entry,)), runner=_fake_runner, runs_root=tmp_path)
    assert row["protocol"] == "semi-supervised-10-per-class" and row["base_method"] == "ssdml"


def test_fashion_mnist_suites_keep_the_settings_of_the_scripts_they_replace(load_benchmark):
    """The settings the per-method scripts ran with (their results are in benchmarks/results/<suite>.json)."""
    harness = load_benchmark("harness.py")
    suites = load_benchmark("suites.py").SUITES

    def entry(suite, row, protocol):
        (found,) = [e for e in suites[suite].entries if e.row == row and (e.label or e.protocol) == protocol]
        return found

    stml = harness.train_settings(entry("stml", "stml", "unsupervised"), 1, False)
    assert stml["preset"] == "stml-fashion-mnist" and stml["protocol"] == "standard" and stml["seed"] == 1
    assert harness.train_settings(entry("stml", "stml", "zero-shot"), 0, True)["train_subset"] == 3000
    assert entry("plm", "plm-sweep[n_alpha=6.0]", "zero-shot").seeds == (0, 1, 2, 3)
    sweep = harness.train_settings(entry("plm", "plm-sweep[n_alpha=6.0]", "zero-shot"), 0, False)
    assert sweep["options"] == {"n_alpha": 6.0} and sweep["train_subset"] == 12000 and sweep["epochs"] == 2
    no_orth = harness.train_settings(entry("ssdml", "ssdml-no-orth", "semi-supervised-10-per-class"), 0, False)
    assert no_orth["labels_per_class"] == 10 and no_orth["epochs"] == 20 and no_orth["options"] == {"orthogonal": False}
    assert entry("ssdml", "ssdml", "semi-supervised-10-per-class").paper_value["recall@1"] == pytest.approx(0.776)
    drml = harness.train_settings(entry("drml", "drml-cosface", "zero-shot"), 2, False)
    assert drml["preset"] == "drml-fashion-mnist" and drml["options"] == {"base_loss": "cosface"} and drml["lr"] == 1e-3
    triplet = harness.train_settings(entry("drml", "triplet", "zero-shot"), 0, False)
    assert triplet["options"]["loss"] == "TripletMarginLoss" and triplet["options"]["samples_per_class"] == 20


def test_seeds_keep_their_extras_where_and_from_what_they_ran(load_benchmark, tmp_path):
    harness = load_benchmark("harness.py")

    def runner(entry, seed, quick):  # a runner may add extras to each seed
        metrics, seconds = _fake_runner(entry, seed, quick)
        return metrics, seconds, {"epochs": 3 + seed}

    stml, _ = harness.run_suite(_suite(harness), runner=runner, runs_root=tmp_path)
    assert [r["epochs"] for r in stml["per_seed"]] == [3, 4, 5] and stml["options"] == {"sigma": 3}
    assert all({"machine", "commit", "date"} <= set(r) for r in stml["per_seed"])
    assert stml["metrics"]["recall@1"] == pytest.approx(0.6) and stml["fingerprint"] == harness.fingerprint(
        _suite(harness).entries[0])


def test_reuse_sees_a_run_from_before_an_option_rename(load_benchmark, tmp_path):
    """A finished run whose config.yaml says ema_m / num_neighbors is the same run as one with momentum /
    group_size: --reuse reads it instead of training it again."""
    harness = load_benchmark("harness.py")
    settings = {"protocol": "standard", "seed": 0, "epochs": 2, "options": {"momentum": 0.9, "group_size": 3}}
    from dmlkit.engine.config import resolve_config

    config = resolve_config({"method": "stml", "dataset": "fashion-mnist", **settings}).to_dict()
    old = {k: v for k, v in config["options"].items() if k not in ("momentum", "group_size")}
    config["options"] = {**old, "ema_m": 0.9, "num_neighbors": 3}
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"recall@1": 0.5}, "seconds": 3.0, "config": config}))
    assert harness.finished_run(tmp_path, settings, "stml", "fashion-mnist")["seconds"] == 3.0
    config["options"]["ema_m"] = 0.5
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {"recall@1": 0.5}, "seconds": 3.0, "config": config}))
    assert harness.finished_run(tmp_path, settings, "stml", "fashion-mnist") is None
def test_reuse_treats_a_setting_newer_than_the_run_as_its_default(load_benchmark, tmp_path):
    harness = load_benchmark("harness.py")
    from dmlkit.engine.config import resolve_config

    settings = {"protocol": "standard", "seed": 0, "options": {"backbone": "mnist-net"}}
    config = resolve_config({"method": "stml", "dataset": "fashion-mnist", **settings}).to_dict()
    del config["eval_every"]  # as if the run predates the setting
    (tmp_path / "metrics.json").write_text(json.dumps({"test": {}, "seconds": 1.0, "config": config}))
    assert harness.finished_run(tmp_path, settings, "stml", "fashion-mnist") is not None
    assert harness.finished_run(tmp_path, {**settings, "eval_every": 2}, "stml", "fashion-mnist") is None


def test_seeds_saved_by_another_process_meanwhile_are_kept(load_benchmark, tmp_path):
    harness = load_benchmark("harness.py")
    suite = harness.Suite("toy", "a toy suite", (harness.Entry("stml", "stml", "glyphs", seeds=(0, 1, 2)),))
    harness.run_suite(suite, runner=_fake_runner, runs_root=tmp_path, seeds=[0])

    def other_process_saves_seed_2(entry, seed, quick):  # seed 2 lands in the file while seed 1 trains here
        harness.run_suite(suite, runner=_fake_runner, runs_root=tmp_path, seeds=[2])
        return _fake_runner(entry, seed, quick)

    harness.run_suite(suite, runner=other_process_saves_seed_2, runs_root=tmp_path, seeds=[1])
    (row,) = json.loads((tmp_path / "toy.json").read_text())["rows"]
    assert row["seeds"] == [0, 1, 2] and row["metrics"]["recall@1"] == pytest.approx(0.6)
