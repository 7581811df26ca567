"""Every registered method trains one short epoch through the engine and reports every metric."""
import json
from pathlib import Path

import pytest

from dmlkit.cli import main
from dmlkit.methods import REGISTRY, method_class

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed")
METRIC_KEYS = {"recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r"}
#: options that make each method fit a 360-item, one-epoch smoke run (its paper defaults assume more data)
SMALL_OPTIONS = {
    "ssdml": ["n_unlabeled_partition=200"],
    "deep-lrml": ["n_unlabeled_partition=200"], "deep-seraph": ["n_unlabeled_partition=200"], "deep-isdml": ["n_unlabeled_partition=200"],
    "deep-apllr": ["n_unlabeled_partition=200"], "deep-apit": ["n_unlabeled_partition=200"],
    "slade": ["epochs=2", "rounds=1", "batch_labeled=30", "batch_unlabeled=30"],  # teacher epoch, student epoch
}


def _available(name: str) -> bool:
    try:
        method_class(name)
        return True
    except KeyError:
        return False


@pytest.mark.parametrize("name", [n for n in REGISTRY if n not in ("initial", "supervised")])
def test_method_trains_through_the_engine(name, tmp_path):
    if not _available(name):
        pytest.skip(f"{name} not in this version")
    cls = method_class(name)
    out = tmp_path / name
    args = ["train", "--method", name, "--dataset", "fashion-mnist", "--train-subset", "360", "--test-subset", "200",
            "--batch-size", "60", "--epochs", "1", "--no-progress", "--no-pictures", "--threads", "2",
            "--set", "backbone=mnist-net", "--out", str(out)]
    if cls.uses_labels == "partial":
        args += ["--labels-per-class", "5"]
    for option in SMALL_OPTIONS.get(name, []):
        args += ["--set", option]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics["test"])
    assert all(0.0 <= metrics["test"][k] <= 1.0 for k in METRIC_KEYS)
