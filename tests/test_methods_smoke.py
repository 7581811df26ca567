"""Every registered method trains one short epoch through the engine: every metric in range, the
weights moved and stayed finite, and the method's own invariant holds after training (INVARIANTS: one for
every method trained here)."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch

from dmlkit.cli import main
from dmlkit.methods import REGISTRY, Method, method_class

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


def _changed(method, initial: dict, prefix: str = "") -> bool:
    return any(not torch.equal(value, initial[key]) for key, value in method.state_dict().items()
               if key.startswith(prefix) and value.is_floating_point())


def _ssdml(method, out: Path, initial: dict) -> None:
    assert method.projection.orthogonality_error() < 1e-4  # L stays on the Stiefel manifold (LᵀL = I)


def _slade(method, out: Path, initial: dict) -> None:
    assert method.phase() == "student-round-1"  # epoch 1 trained the teacher, epoch 2 the student
    unlabeled = method.pseudo_labels >= 0
    assert unlabeled.any() and int(method.pseudo_labels.max()) < method.num_classes  # K = C clusters
    for name in ("stage-teacher.pt", "stage-pseudo-labels-round-1.pt"):  # written by the engine
        assert (out / name).is_file(), name


def _ema_teacher(prefix: str):
    def check(method, out: Path, initial: dict) -> None:
        assert _changed(method, initial, prefix)  # the EMA moved the teacher too
    return check


def _metric_and_root(method, out: Path, initial: dict) -> None:
    """The classical baselines keep M ⪰ 0 with its symmetric square root: M^{1/2} M^{1/2} = M (spec §8)."""
    metric, root = method.metric.double(), method.metric_sqrt.double()
    assert torch.allclose(metric, metric.T, atol=1e-6) and float(torch.linalg.eigvalsh(metric).min()) >= -1e-6
    assert torch.allclose(root @ root, metric, atol=1e-4 * max(1.0, float(metric.abs().max())))


def _unit_embeddings(dim):
    def check(method, out: Path, initial: dict) -> None:
        method.eval()
        z = method.embed(torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
        assert z.shape == (4, dim(method.config)) and torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)
    return check


def _deepcluster(method, out: Path, initial: dict) -> None:
    labels = method.pseudo_labels
    assert len(labels) == 360 and int(labels.min()) >= 0 and int(labels.max()) < method.config.n_clusters
    _unit_embeddings(lambda c: c.embedding_dim)(method, out, initial)


#: what each method guarantees after training, beyond moved, finite weights
INVARIANTS = {"ssdml": _ssdml, "slade": _slade, "stml": _ema_teacher("teacher."),
              "plm": _ema_teacher("momentum_encoder."), "deepcluster": _deepcluster,
              "instance": _unit_embeddings(lambda c: c.embedding_dim),
              "drml": _unit_embeddings(lambda c: c.n_branches * c.node_dim),
              **dict.fromkeys(("deep-lrml", "deep-seraph", "deep-isdml", "deep-apllr", "deep-apit"), _metric_and_root)}


@pytest.fixture()
def built(monkeypatch) -> list:
    """``[(method, initial state)]`` of every method the engine builds during the test."""
    record = []
    build = Method.from_options.__func__

    def spy(cls, options, info):
        method = build(cls, options, info)
        record.append((method, {k: v.detach().clone() for k, v in method.state_dict().items()}))
        return method

    monkeypatch.setattr(Method, "from_options", classmethod(spy))
    return record


def _available(name: str) -> bool:
    try:
        method_class(name)
        return True
    except KeyError:
        return False


@pytest.mark.parametrize("name", [n for n in REGISTRY if n not in ("initial", "supervised")])
def test_method_trains_through_the_engine(name, tmp_path, built):
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
    (method, initial), = built
    assert _changed(method, initial), "training left every weight where it started"
    assert all(torch.isfinite(v).all() for v in method.state_dict().values() if v.is_floating_point())
    with open(out / "logs" / "metrics.csv") as handle:
        losses = [float(row["train/loss_epoch"]) for row in csv.DictReader(handle) if row.get("train/loss_epoch")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert name in INVARIANTS, f"give {name} an invariant in INVARIANTS"
    INVARIANTS[name](method, out, initial)
