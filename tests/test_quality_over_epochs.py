"""Pseudo-supervision quality over epochs (run setting quality_every, dmlkit quality --over-epochs) and
SSDML's propagated-triplet estimator."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dmlkit.engine.config import ConfigError, resolve_config
from dmlkit.evaluation.quality import quality_table, triplet_fractions
from dmlkit.methods.ssdml import PropagatedTriplets, SSDMLConfig

# two tight clusters of 3, far apart: with k = 4 each node's neighbours are its 2 cluster mates and the
# 2 nearest nodes of the other cluster
TWO_CLUSTERS = torch.tensor([[0, 0], [0.1, 0], [0, 0.1], [5, 5], [5.1, 5], [5, 5.1]], dtype=torch.float64)
CLASSES = torch.tensor([0, 0, 0, 1, 1, 1])


def test_triplet_fractions_hand_computed():
    triplets = torch.tensor([[0, 1, 2],   # correct
                             [0, 2, 1],   # inverted
                             [2, 3, 3],   # positive and negative both of the anchor's class
                             [3, 0, 1]])  # neither
    assert triplet_fractions(triplets, torch.tensor([0, 0, 1, 1])) == {
        "positive_same_class": 0.5, "negative_same_class": 0.5, "correct": 0.25, "inverted": 0.25}


def test_ssdml_triplets_on_two_labeled_clusters_are_all_correct():
    """Every node labeled, γ = 0.4: W* = (1−γ) Σ_t γᵗ Qᵗ W⁰ with |QᵗW⁰| ≤ 1, so the tail is at most
    γ/(1−γ) < 1 = |W⁰_ij| and W keeps W⁰'s sign (+1 same class, −1 other). Each anchor ranks its 2 mates
    first: its k/2 = 2 triplets are (anchor, mate, other) -> correct = 1."""
    estimator = PropagatedTriplets(SSDMLConfig(k=4, gamma=0.4))
    row = quality_table(TWO_CLUSTERS, CLASSES, {"ssdml-triplets": estimator}, baselines=(), batch_size=2,
                        visible_labels=CLASSES)[0]
    assert row["num_items"] == 6 and row["num_triplets"] == 12  # whole set at once, not batches of 2
    assert (row["positive_same_class"], row["negative_same_class"], row["correct"], row["inverted"]) == (1, 0, 1, 0)
    assert row["purity"] is None and row["pair_precision"] is None  # no groups, no similarity


def test_label_reading_estimators_get_revealed_labels_and_partitions_map_back():
    seen = []

    def spy(z, labels):
        seen.append(labels.clone())
        return {"triplets": torch.tensor([[0, 1, 2]])}

    spy.needs_labels = True
    y = torch.arange(4).repeat_interleave(5)  # 4 classes x 5
    quality_table(torch.randn(20, 3), y, {"spy": spy}, baselines=(), batch_size=10, labels_per_class=2)
    assert len(seen) == 2  # batch estimator: one call per batch of 10
    visible = torch.cat(seen)  # the two batches cover all 20 items
    assert [int((visible == c).sum()) for c in range(4)] == [2, 2, 2, 2] and int((visible < 0).sum()) == 12
    # a partitioned estimator returns item indices of the whole set
    triplets = PropagatedTriplets(SSDMLConfig(k=2), max_nodes=3)(TWO_CLUSTERS, CLASSES)["triplets"]
    assert triplets.shape == (6, 3) and sorted(triplets[:, 0].tolist()) == list(range(6))


def test_settings_are_validated():
    assert resolve_config({"method": "stml"}).quality_every == 0  # off by default
    with pytest.raises(ConfigError, match="quality_every must be at least 0"):
        resolve_config({"method": "stml", "quality_every": -1})
    with pytest.raises(ConfigError, match="quality_items must be at least 2"):
        resolve_config({"method": "stml", "quality_items": 1})


@pytest.fixture
def tiny(dataset_registry):
    from dmlkit.data import register_dataset
    from tests.data_fixtures import tiny_records

    register_dataset("tiny", lambda root: tiny_records(), "four classes, 8 train images each")


def test_the_subset_is_fixed_by_the_seed(tiny):
    from dmlkit.engine.config import RunConfig
    from dmlkit.engine.quality_monitor import QualityMonitor
    from dmlkit.engine.run import prepare_data

    train = prepare_data(RunConfig(method="stml", dataset="tiny"), "none").train
    first, again, other = (QualityMonitor(train, 12, seed) for seed in (0, 0, 1))
    assert np.array_equal(first.indices, again.indices) and not np.array_equal(first.indices, other.indices)
    assert len(first.indices) == 12 == len(set(first.indices.tolist()))
    assert len(QualityMonitor(train, 2000, 0).indices) == len(train)  # all items when the split is smaller


QUICK = {"batch_size": 10, "pictures": False, "progress": False, "threads": 1, "epochs": 3,
         "options": {"backbone": "mnist-net", "g_dim": 16, "embedding_dim": 8, "momentum": 0.5}}


def test_training_records_quality_at_epochs_0_every_n_and_last_and_the_cli_prints_it(tiny, tmp_path, capsys,
                                                                                    monkeypatch):
    import dmlkit
    from dmlkit.cli import main
    from dmlkit.engine.quality_monitor import QualityMonitor

    watched = dmlkit.train("stml", "tiny", str(tmp_path / "watched"), quality_every=2, quality_items=20, **QUICK)
    history = watched["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]
    keys = [k for k in history[0] if k.startswith("quality/")]
    assert {"quality/kmeans/purity", "quality/stml-similarity/pair_precision"} <= set(keys)
    for record in history:
        measured = [k for k in record if k.startswith("quality/")]
        assert measured == (keys if record["epoch"] in (0, 2, 3) else [])  # every 2nd epoch and the last
        for key in measured:
            low = -1.0 if key.endswith("correlation") else 0.0
            assert low <= record[key] <= 1.0, key
    assert not any(k.startswith("quality/") for k in watched["test"])  # test metrics stay test metrics

    def no_cost(*args, **kwargs):
        raise AssertionError("quality measured although quality_every is 0")

    monkeypatch.setattr(QualityMonitor, "__init__", no_cost)
    plain = dmlkit.train("stml", "tiny", str(tmp_path / "plain"), **QUICK)
    assert not any(k.startswith("quality/") for r in plain["history"] for k in r)
    assert [r["epoch"] for r in plain["history"]] == [1, 2, 3]
    assert plain["test"] == watched["test"]  # measuring leaves the training untouched

    assert main(["quality", str(tmp_path / "watched"), "--over-epochs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("| epoch"))
    assert "kmeans purity" in header and "stml-similarity pair_precision" in header and "test recall@1" in header
    rows = [line.split(" | ")[0].strip("| ") for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert rows == ["0", "2", "3"]
    saved = json.loads((tmp_path / "watched" / "metrics.json").read_text())["history"][0]
    assert f"| {saved['quality/kmeans/purity']:.3f} |" in next(line for line in lines if line.startswith("| 0 |"))
    assert main(["quality", str(tmp_path / "plain"), "--over-epochs"]) == 2
    assert "did not record quality over epochs: train with --set quality_every=1" in capsys.readouterr().err
