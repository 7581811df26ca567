"""The five deep classical baselines as methods: Algorithm 1 with tiny stand-in backbones."""
import numpy as np
import pytest
import torch
from torch import nn

from dmlkit.data.base import DMLDataset
from dmlkit.methods import classical as M
from dmlkit.methods import method_class
from dmlkit.methods.base import BuildInfo, RefreshContext
from dmlkit.models.heads import EmbeddingHead

NAMES = ["deep-lrml", "deep-seraph", "deep-isdml", "deep-apllr", "deep-apit"]
OPTIONS = dict(k=4, n_unlabeled_partition=30, epochs_per_partition=2, group_size=4, labeled_per_batch=6,
               labeled_per_class=2)
BATCH = 18  # (18 - 6 labeled) // 4 = 3 groups
REAL_BUILD = M._build_network


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.out_dim = 16
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU())

    def forward(self, images):
        return self.body(images)


@pytest.fixture(autouse=True)
def tiny_network(monkeypatch):
    monkeypatch.setattr(M, "_build_network", lambda config, info: (TinyNet(), EmbeddingHead(16, 8, normalize=True)))


def _dataset(n=60, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 1, 6, 6), dtype=np.uint8)
    truth = np.arange(n) % 3
    visible = np.full(n, -1)
    visible[:12] = truth[:12]  # 4 labeled per class
    return DMLDataset(images, visible, truth, name="tiny", image_size=6)


def _context(dataset, epoch=0):
    def embed(fn, data=None):
        data = data or dataset
        images = torch.stack([data.image(i) for i in range(len(data))])
        with torch.no_grad():
            return fn(images)

    return RefreshContext(epoch=epoch, train=dataset, embed=embed, knn=None, device=torch.device("cpu"), seed=0)


def _build(name, **extra):
    options = dict(OPTIONS)
    if name == "deep-seraph":
        options["group_size"] = 1
    options.update(extra)
    return method_class(name).from_options(options, BuildInfo(channels=1, image_size=6, num_train=60, num_classes=3))


def _collate(dataset, indices):
    items = [dataset[i] for i in indices]
    return {"image": torch.stack([it["image"] for it in items]), "label": torch.tensor([it["label"] for it in items]),
            "index": torch.tensor([it["index"] for it in items])}


@pytest.mark.parametrize("name", NAMES)
def test_training_loss_is_finite_and_reaches_the_network(name):
    data = _dataset()
    method = _build(name)
    assert method.name == name and method.uses_labels == "partial"
    method.refresh(_context(data))
    batches = list(method.batch_sampler(data, BATCH, seed=0, epoch=0))
    assert len(batches) == len(method.batch_sampler(data, BATCH, 0, 0)) == (12 + 30) // BATCH
    losses = method.training_loss(_collate(data, batches[0]))
    assert all(torch.isfinite(v).all() for v in losses.values())
    losses["loss"].backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert torch.isfinite(method.metric).all()
    assert torch.linalg.eigvalsh(method.metric.double()).min() >= -1e-6


@pytest.mark.parametrize("name", NAMES)
def test_embedding_distances_are_the_learned_metric(name):
    data = _dataset()
    method = _build(name)
    method.refresh(_context(data))
    method.training_loss(_collate(data, next(iter(method.batch_sampler(data, BATCH, 0, 0)))))
    images = torch.stack([data.image(i) for i in range(5)])
    with torch.no_grad():
        x, z = method.embed(images), method.features(images)
    assert x.shape == (5, 8)
    diff = z[0] - z[1]
    assert (x[0] - x[1]).pow(2).sum().item() == pytest.approx((diff @ method.metric @ diff).item(), rel=1e-4)


def test_batches_are_graph_groups_plus_labeled_items_from_the_partition():
    data = _dataset()
    method = _build("deep-lrml")
    method.refresh(_context(data))
    nodes = set(method._nodes.tolist())
    assert set(range(12)) <= nodes and len(nodes) == 42  # all labeled + 30 unlabeled
    for batch in method.batch_sampler(data, BATCH, seed=0, epoch=0):
        assert set(batch) <= nodes and len(set(batch)) == len(batch)
        seed_local = method._lookup[batch[0]]
        group = method._nodes[method._neighbours[seed_local, :3].numpy()].tolist()
        assert set(group) <= set(batch)  # a seed comes with its nearest graph neighbours
        labels = data.labels[batch]
        counts = np.bincount(labels[labels >= 0], minlength=3)
        assert counts.max() <= 2 + 3  # 2 drawn per class, plus labeled items that came in a group
    first = [list(b) for b in method.batch_sampler(data, BATCH, seed=0, epoch=0)]
    assert first == [list(b) for b in method.batch_sampler(data, BATCH, seed=0, epoch=0)]
    assert first != [list(b) for b in method.batch_sampler(data, BATCH, seed=0, epoch=1)]


def test_labeled_picks_take_two_per_class():
    data = _dataset()
    method = _build("deep-seraph")  # no groups of neighbours: random nodes + labeled picks
    method.refresh(_context(data))
    picks = method.batch_sampler(data, BATCH, 0, 0)._labeled_picks(torch.Generator().manual_seed(0))
    for pick in picks:
        labels = method._node_labels[pick]
        assert (labels >= 0).all() and torch.bincount(labels, minlength=3).tolist() == [2, 2, 2]


def test_partition_kept_for_epochs_per_partition_then_redrawn():
    data = _dataset()
    method = _build("deep-lrml")
    method.refresh(_context(data, epoch=0))
    first, edges = method._nodes.copy(), method._edges.clone()
    method.refresh(_context(data, epoch=1))
    assert np.array_equal(method._nodes, first) and torch.equal(method._edges, edges)
    method.refresh(_context(data, epoch=2))
    assert not np.array_equal(method._nodes, first)


def test_lrml_metric_step_keeps_unit_determinant():
    data = _dataset()
    method = _build("deep-lrml")
    method.refresh(_context(data))
    for batch in list(method.batch_sampler(data, BATCH, 0, 0))[:2]:
        method.training_loss(_collate(data, batch))
    assert torch.logdet(method.metric.double()).item() == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("name", ["deep-apllr", "deep-apit"])
def test_affinity_methods_set_the_metric_at_refresh_from_signed_affinities(name):
    data = _dataset()
    method = _build(name)
    method.refresh(_context(data))
    assert not torch.allclose(method.metric, torch.eye(8))
    assert (method._edge_weights < 0).any() and (method._edge_weights > 0).any()
    before = method.metric.clone()
    method.training_loss(_collate(data, next(iter(method.batch_sampler(data, BATCH, 0, 0)))))
    assert torch.equal(method.metric, before)  # the M-step is per epoch, not per batch


def test_isdml_graph_is_density_weighted_and_symmetric():
    data = _dataset()
    lrml, isdml = _build("deep-lrml"), _build("deep-isdml")
    isdml.load_state_dict(lrml.state_dict())
    lrml.refresh(_context(data))
    isdml.refresh(_context(data))
    assert torch.equal(lrml._edges[:, 0] < lrml._edges[:, 1], torch.ones(len(lrml._edges), dtype=torch.bool))
    assert not torch.allclose(lrml._edge_weights.float(), isdml._edge_weights.float())


def test_a_few_sgd_steps_lower_the_lrml_objective_on_a_fixed_batch():
    data = _dataset()
    method = _build("deep-lrml")
    method.refresh(_context(data))
    batch = _collate(data, next(iter(method.batch_sampler(data, BATCH, 0, 0))))
    method.training_loss(batch)  # settle M on this batch
    fixed = lambda: M.C.lrml_loss(method.embed(batch["image"]), batch["label"], *method._batch_edges(method._lookup[batch["index"]]))
    start = fixed()["loss"].item()
    for _ in range(5):  # plain gradient descent, small steps: M stretches some directions ~50x
        method.zero_grad()
        fixed()["loss"].backward()
        with torch.no_grad():
            for p in method.parameters():
                p -= 1e-5 * p.grad
    assert fixed()["loss"].item() < start


def test_errors_are_clear():
    data = _dataset()
    with pytest.raises(ValueError, match="no option"):
        _build("deep-lrml", nonsense=1)
    method = _build("deep-lrml")
    with pytest.raises(RuntimeError, match="refresh"):
        method.training_loss(_collate(data, [0, 1, 2]))
    method.refresh(_context(data))
    with pytest.raises(ValueError, match="batch_size"):
        method.batch_sampler(data, 8, 0, 0)
    outside = sorted(set(range(60)) - set(method._nodes.tolist()))[:3]
    with pytest.raises(ValueError, match="outside the current partition"):
        method.training_loss(_collate(data, outside))
    with pytest.raises(ValueError, match="group_size"):
        list(_refreshed("deep-lrml", data, group_size=9).batch_sampler(data, 24, 0, 0))


def _refreshed(name, data, **extra):
    method = _build(name, **extra)
    method.refresh(_context(data))
    return method


def test_zero_unlabeled_per_partition_takes_the_whole_split():
    data = _dataset()
    method = _refreshed("deep-lrml", data, n_unlabeled_partition=0)
    assert len(method._nodes) == 60
    assert len(method.batch_sampler(data, BATCH, 0, 0)) == 60 // BATCH


def test_batch_edges_are_exactly_the_partition_edges_among_batch_members():
    data = _dataset()
    method = _refreshed("deep-isdml", data)
    graph = {tuple(e): w for e, w in zip(method._edges.tolist(), method._edge_weights.tolist())}
    for neighbours_row, i in zip(method._neighbours.tolist(), range(len(method._nodes))):
        assert all((min(i, j), max(i, j)) in graph for j in neighbours_row)  # every kNN pair is an edge
    batch = next(iter(method.batch_sampler(data, BATCH, 0, 0)))
    local = method._lookup[torch.tensor(batch)]
    edges, weights = method._batch_edges(local)
    expected = {(a, b): graph[(min(la, lb), max(la, lb))]
                for a, la in enumerate(local.tolist()) for b, lb in enumerate(local.tolist())
                if a < b and (min(la, lb), max(la, lb)) in graph}
    assert {tuple(e): pytest.approx(w) for e, w in zip(edges.tolist(), weights.tolist())} == expected
    assert len(expected) >= 3 * 3  # each group brings its seed's edges


def test_real_network_is_the_ssdml_mnist_net_with_an_l2_head():
    backbone, head = REAL_BUILD(M.ClassicalConfig(backbone="mnist-net"), BuildInfo(channels=1, image_size=28))
    assert backbone.out_dim == 500 and head.out_dim == 128
    z = head(backbone(torch.rand(2, 1, 28, 28)))
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)
    _, none = REAL_BUILD(M.ClassicalConfig(backbone="mnist-net", embedding_dim=None), BuildInfo(channels=1, image_size=28))
    assert none is None  # CIFAR-10 style: l2 straight after the backbone
