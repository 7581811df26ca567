"""benchmarks/ssdml.py: the triplet-quality diagnostic written into the SSDML rows."""
import numpy as np
import torch


def test_triplet_quality_by_hand(load_benchmark):
    bench = load_benchmark("ssdml.py")
    labels = np.array([0, 0, 1, 1, 2])
    triplets = torch.tensor([
        [0, 1, 2],  # positive same, negative other: correct
        [2, 4, 3],  # positive other, negative same: inverted
        [0, 1, 1],  # both same: no signal
        [3, 0, 4],  # neither same: no signal
    ])
    quality = bench.triplet_quality(triplets, labels)
    assert quality == {"triplets": 4, "positive_same_class": 0.5, "negative_same_class": 0.5,
                       "correct": 0.25, "inverted": 0.25}


def test_triplet_quality_of_no_triplets_is_nan(load_benchmark):
    bench = load_benchmark("ssdml.py")
    quality = bench.triplet_quality(torch.zeros(0, 3, dtype=torch.long), np.array([0, 1]))
    assert quality["triplets"] == 0 and np.isnan(quality["correct"])


def test_epochs_option_reaches_the_trained_rows_only(load_benchmark, tmp_path, monkeypatch):
    bench = load_benchmark("ssdml.py")
    seen = []

    def fake_train(method, dataset, out, **settings):
        seen.append((method, settings.get("epochs")))
        return {"test": {"recall@1": 0.5, "nmi": 0.4}, "seconds": 1.0, "best": {},
                "config": {"epochs": settings.get("epochs", 50)}}

    monkeypatch.setattr(bench.dmlkit, "train", fake_train)
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    argv = ["--only", "deep-lrml", "--only", "initial", "--epochs", "3", "--out", str(tmp_path / "runs")]
    assert bench.main(argv) == 0
    assert seen == [("deep-lrml", 3), ("initial", None)]
    assert bench.settings_for(False, None) == {"protocol": "standard", "labels_per_class": 10, "seed": 0,
                                               "progress": False, "pictures": False}
