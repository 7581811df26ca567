"""SLADE's data arrangement (spec SLADE.md §2, test §11.10) and presets."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dmlkit.data.base import DatasetRecords
from dmlkit.data.splits import make_split
from dmlkit.engine.config import load_preset
from dmlkit.methods import method_class


@pytest.fixture()
def bench(load_benchmark):
    return load_benchmark("slade.py")  # results redirected to tmp_path


def _records() -> DatasetRecords:
    labels = np.concatenate([np.repeat(np.arange(6), 10), np.repeat(np.arange(6), 4)])
    splits = np.array(["train"] * 60 + ["test"] * 24)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None].repeat(28, 2).repeat(28, 3)
    return DatasetRecords("toy", images, labels, splits, image_size=28, channels=1)


def test_pool_arrangement_is_disjoint(bench):
    """Labeled, unlabeled and test images are pairwise disjoint; labeled and test classes are disjoint;
    the pool holds every class."""
    records = bench.pool_records(_records(), labeled_per_class=3, seed=0)
    split = make_split(records)
    train, test = split.train, split.query
    ids = lambda ds, mask: set(np.asarray(ds.images)[mask, 0, 0, 0].tolist())
    labeled = ids(train, train.labels >= 0)
    pool = ids(train, train.labels < 0)
    tested = ids(test, np.ones(len(test), dtype=bool))
    assert len(labeled) == 9 and len(pool) == 51 and len(tested) == 12
    assert not (labeled & pool) and not (labeled & tested) and not (pool & tested)
    assert set(train.true_labels[train.labels >= 0]) == {0, 1, 2}
    assert set(test.true_labels) == {3, 4, 5}
    assert set(train.true_labels[train.labels < 0]) == set(range(6))
    with pytest.raises(ValueError, match="labeled_per_class"):
        bench.pool_records(_records(), labeled_per_class=11)


@pytest.mark.parametrize("name", ["slade-fashion-mnist", "slade-fashion-mnist-contrastive", "slade-glyphs"])
def test_presets_build(name):
    preset = load_preset(name)
    cls = method_class(preset["method"])
    config = cls.Config(**preset["options"])
    assert preset["batch_size"] == config.batch_labeled + config.batch_unlabeled
    assert preset["epochs"] == config.teacher_epochs + config.rounds * config.student_epochs


def test_benchmark_settings(bench, tmp_path):
    method, slade = bench.settings_for("slade", quick=False)
    _, supervised = bench.settings_for("supervised", quick=False)
    assert method == "slade" and slade["epochs"] == supervised["epochs"]  # the same training length
    assert slade["epochs"] % slade["eval_every"] == 0  # evaluated at the end of every stage
    _, own = bench.settings_for("slade-all-pairs", quick=False, out_root=tmp_path)
    assert own["options"]["pair_selection"] == "all" and own["options"]["teacher_epochs"] > 0
    _, no_basis = bench.settings_for("slade-no-basis", quick=False, out_root=tmp_path)
    changed = {k: v for k, v in no_basis["options"].items() if slade["options"].get(k) != v}
    assert changed == {"lambda2": 0.0, "rounds": 1}  # one round without the basis loss, nothing else
    assert slade["options"]["pair_selection"] == "positives" and slade["options"]["n_clusters"] == 10
    _, both = bench.settings_for("slade-select-both", quick=False, out_root=tmp_path)
    assert {k: v for k, v in both["options"].items() if slade["options"].get(k) != v} == {
        "pair_selection": "confident",
        "rounds": 1,
    }
    (tmp_path / "slade").mkdir()
    (tmp_path / "slade" / "stage-teacher.pt").write_bytes(b"")
    for ablation in bench.ABLATIONS:
        _, reused = bench.settings_for(ablation, quick=False, out_root=tmp_path)
        assert reused["options"]["teacher_weights"] == str(tmp_path / "slade" / "stage-teacher.pt")
        assert (
            reused["options"]["teacher_epochs"] == 0
            and reused["epochs"] == reused["options"]["student_epochs"]
        )


def test_benchmark_registers_its_dataset_through_the_public_hook(bench, dataset_registry, monkeypatch):
    """``register`` adds fashion-mnist-slade with dmlkit.register_dataset: pool_records over fashion-mnist."""
    from dmlkit.data import list_datasets, load_records, register_dataset

    register_dataset("fashion-mnist", lambda root: _records(), "toy stand-in", overwrite=True)
    pool_records = bench.pool_records
    monkeypatch.setattr(bench, "pool_records", lambda base, **kw: pool_records(base, labeled_per_class=3, **kw))
    bench.register()
    bench.register()  # idempotent: the second call replaces the first
    assert "1,000 labeled images" in list_datasets()[bench.NAME]
    records = load_records(bench.NAME)
    assert records.name == bench.NAME and len(records) == 60 + 12  # every train image + test of classes 3-5
    assert records.labeled.sum() == 9
    # --test-classes seen: the very same train part (labeled set and pool), test images of classes 0-2
    seen = load_records(bench.SEEN_NAME)
    train, seen_train = records.splits == "train", seen.splits == "train"
    assert seen.name == bench.SEEN_NAME and len(seen) == 60 + 12
    assert np.array_equal(seen.labeled[seen_train], records.labeled[train])
    assert np.array_equal(np.asarray(seen.images)[seen_train], np.asarray(records.images)[train])
    assert set(seen.labels[~seen_train].tolist()) == {0, 1, 2} and set(records.labels[~train].tolist()) == {3, 4, 5}


def test_benchmark_pseudo_label_quality_by_hand(bench, tmp_path, monkeypatch):
    """Pool true labels [0, 0, 1, 1] in clusters [0, 0, 0, 1]: purity 3/4; the 3 same-cluster pairs hold
    1 same-class pair (precision 1/3) of the 2 there are (recall 1/2); the labeled item (-1) is left out."""
    import types

    import torch

    import dmlkit.data

    records = types.SimpleNamespace(
        labels=np.array([5, 0, 0, 1, 1, 9]), splits=np.array(["train"] * 5 + ["test"])
    )
    monkeypatch.setattr(dmlkit.data, "load_records", lambda name, root=None: records)
    stage = tmp_path / "stage-pseudo-labels-round-1.pt"
    torch.save({"round": 1, "pseudo_labels": torch.tensor([-1, 0, 0, 0, 1])}, stage)
    quality = bench.pseudo_label_quality(tmp_path, 1)
    assert quality == {"clusters": 2, "purity": 0.75, "pair_precision": round(1 / 3, 4), "pair_recall": 0.5}
    assert bench.pseudo_label_quality(tmp_path, 2) is None  # no such round
    torch.save({"round": 1, "pseudo_labels": torch.tensor([0, 1])}, stage)
    assert bench.pseudo_label_quality(tmp_path, 1) is None  # a subset run: indices no longer match the split


def test_benchmark_ssl_init_reaches_every_run_and_names_its_directories(bench, tmp_path):
    weights = str(tmp_path / "ssl-init-backbone.pt")
    _, slade = bench.settings_for("slade", quick=True, ssl_weights=weights, threads=1)
    _, supervised = bench.settings_for("supervised", quick=True, ssl_weights=weights)
    assert slade["options"]["pretrained"] == weights and slade["options"]["student_init"] == "ssl"
    assert supervised["options"]["pretrained"] == weights and slade["threads"] == 1
    _, plain = bench.settings_for("slade", quick=True)
    assert "pretrained" not in plain["options"] and plain["options"]["student_init"] == "teacher"
    assert plain["threads"] == bench.SHARED["threads"]
    assert bench.run_dir_name("slade", weights) == "slade[ssl-init]" and bench.run_dir_name("slade") == "slade"
    (tmp_path / "slade[ssl-init]").mkdir()
    (tmp_path / "slade[ssl-init]" / "stage-teacher.pt").write_bytes(b"")
    _, ablation = bench.settings_for("slade-no-basis", quick=True, out_root=tmp_path, ssl_weights=weights)
    assert ablation["options"]["teacher_weights"] == str(tmp_path / "slade[ssl-init]" / "stage-teacher.pt")


def test_benchmark_seeds_reach_settings_rows_and_the_reused_teacher(bench, tmp_path, monkeypatch):
    """--seeds 0 1: each seed trains with its own seed, its rows carry it, seed 1's directories get
    ``-seed1`` and its ablations reuse seed 1's teacher, never seed 0's."""
    _, seeded = bench.settings_for("slade", quick=True, seed=1)
    assert seeded["seed"] == 1 and bench.run_dir_name("slade", None, 1) == "slade-seed1"
    assert bench.run_dir_name("slade", "w.pt", 2) == "slade[ssl-init]-seed2"
    for name in ("slade", "slade-seed1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "stage-teacher.pt").write_bytes(b"")
    _, ablation = bench.settings_for("slade-all-pairs", quick=True, out_root=tmp_path, seed=1)
    assert ablation["options"]["teacher_weights"] == str(tmp_path / "slade-seed1" / "stage-teacher.pt")

    calls = []

    def train(method, dataset, out, **settings):
        calls.append((Path(out).name, settings["seed"]))
        epochs = settings["epochs"]
        record = {"recall@1": 0.5, "nmi": 0.4}
        return {"history": [{"epoch": e, **record} for e in range(1, epochs + 1)], "seconds": 1.0}

    monkeypatch.setattr(bench.dmlkit, "train", train)
    monkeypatch.setattr(bench, "register", lambda: None)
    assert bench.main(["--quick", "--only", "supervised", "--seeds", "0", "1", "--out", str(tmp_path / "runs")]) == 0
    assert calls == [("supervised", 0), ("supervised-seed1", 1)]
    rows = sys.modules["_common"].load_results("slade")["rows"]
    assert sorted((r["method"], r["seed"]) for r in rows) == [("supervised", 0), ("supervised", 1)]
