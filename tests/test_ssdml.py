"""SSDML: angular triplet loss (Eq. 3), the Stiefel L-step, and the method on tiny stand-in data
(spec SSDML §5, §6, §12 tests 6–8)."""
from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dmlkit.data.base import DMLDataset
from dmlkit.losses.angular_triplet import angular_margins, angular_triplet_loss, minimize_stiefel
from dmlkit.methods.base import BuildInfo, RefreshContext
from dmlkit.methods.ssdml import SSDML, SSDMLConfig, TripletBatchSampler
from dmlkit.models.orthogonal import random_orthonormal

CONFIGS = Path(__file__).resolve().parent.parent / "src" / "dmlkit" / "configs"


# ------------------------------------------------------------------------------ spec test 6: loss by hand
@pytest.mark.parametrize("alpha,margin,loss", [(45.0, -4.8, 0.008196), (40.0, -3.261259, 0.037623)])
def test_angular_loss_by_hand(alpha, margin, loss):
    a, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.8, 0.6]]), torch.tensor([[0.0, 1.0]])
    assert float(angular_margins(a, p, n, None, alpha)) == pytest.approx(margin, abs=1e-5)
    assert float(angular_triplet_loss(a, p, n, torch.eye(2), alpha)) == pytest.approx(loss, abs=1e-6)
    assert 4 * math.tan(math.radians(40)) ** 2 == pytest.approx(2.816353, abs=1e-6)


def test_loss_decreases_as_the_positive_approaches():
    a, p0, n = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    values = [float(angular_triplet_loss(a, a + s * (p0 - a), n, None, 40.0)) for s in torch.linspace(1, 0, 6)]
    assert all(x > y for x, y in pairwise(values))
    # and increases as the negative approaches the anchor-positive midpoint
    mid = 0.5 * (a + p0)
    pushed = [float(angular_triplet_loss(a, p0, mid + s * (n - mid), None, 40.0)) for s in torch.linspace(1, 0.1, 6)]
    assert all(x < y for x, y in pairwise(pushed))


def test_loss_reduction_and_gradients():
    gen = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(30, 8, generator=gen), dim=1).requires_grad_(True)
    L = random_orthonormal(8, 4, gen)
    total = angular_triplet_loss(z[:10], z[10:20], z[20:], L)
    mean = angular_triplet_loss(z[:10], z[10:20], z[20:], L, reduction="mean")
    assert float(total) == pytest.approx(10 * float(mean), rel=1e-6)
    total.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reduction"):
        angular_triplet_loss(z[:10], z[10:20], z[20:], L, reduction="max")


# ------------------------------------------------------------------------------ spec test 7: orthogonality
def test_loss_is_invariant_to_rotations_of_L():
    gen = torch.Generator().manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(30, 8, generator=gen, dtype=torch.float64), dim=1)
    L = random_orthonormal(8, 4, gen).double()
    R = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))[0]
    assert float(angular_triplet_loss(z[:10], z[10:20], z[20:], L)) == pytest.approx(
        float(angular_triplet_loss(z[:10], z[10:20], z[20:], L @ R)), rel=1e-12)


def test_stiefel_cg_decreases_the_loss_and_stays_orthonormal():
    gen = torch.Generator().manual_seed(2)
    z = torch.nn.functional.normalize(torch.randn(300, 32, generator=gen), dim=1)
    cost = lambda L: angular_triplet_loss(z[:100], z[100:200], z[200:], L)
    L = random_orthonormal(32, 16, gen)
    for _ in range(3):  # successive L-steps, warm-started
        new = minimize_stiefel(cost, L, max_iter=10)
        assert float(cost(new)) < float(cost(L))
        assert float((new.T.double() @ new.double() - torch.eye(16, dtype=torch.float64)).abs().max()) < 1e-5
        L = new
    free = minimize_stiefel(cost, L, max_iter=10, orthogonal=False)  # "w/o orth": Euclidean CG
    assert float(cost(free)) < float(cost(L))
    assert float((free.T @ free - torch.eye(16)).abs().max()) > 1e-3


# ------------------------------------------------------------------------------ the method on stand-in data
def tiny_dataset(n: int = 48, labeled_per_class: int = 3, classes: int = 3) -> DMLDataset:
    rng = np.random.default_rng(0)
    truth = np.arange(n) % classes
    images = rng.integers(0, 255, size=(n, 1, 28, 28), dtype=np.uint8)
    images[:, :, :10, :10] = (truth * 100)[:, None, None, None]  # a class-dependent patch
    labels = np.full(n, -1)
    labels[: classes * labeled_per_class] = truth[: classes * labeled_per_class]
    return DMLDataset(images, labels, truth, name="tiny/train")


def context_for(data: DMLDataset, epoch: int) -> RefreshContext:
    def embed(fn, dataset=None):
        dataset = dataset or data
        with torch.no_grad():
            return fn(torch.stack([dataset.image(i) for i in range(len(dataset))]))

    return RefreshContext(epoch=epoch, train=data, embed=embed, knn=None, device=torch.device("cpu"), seed=0)  # type: ignore[arg-type]


def build(**options) -> SSDML:
    info = BuildInfo(channels=1, image_size=28, num_train=48, num_classes=3, dataset="tiny", views_preset="grey28")
    defaults = {"backbone": "mnist-net", "n_unlabeled_partition": 21, "k": 4, "epochs_per_partition": 2, "head_dim": 16,
                "embedding_dim": 8}  # backbone: the old default for 28-px grey
    return SSDML.from_options({**defaults, **options}, info)


def batch_of(data: DMLDataset, indices: list[int]) -> dict[str, torch.Tensor]:
    return {"image": torch.stack([data.image(i) for i in indices]), "label": torch.as_tensor(data.labels[indices]),
            "index": torch.tensor(indices)}


def test_shapes_and_embedding_dimension():
    method = build(head_dim=128, embedding_dim=64)
    images = torch.rand(5, 1, 28, 28)
    assert method.backbone.out_dim == 500
    assert method.features(images).shape == (5, 128)
    assert method.embed(images).shape == (5, 64)
    assert torch.allclose(method.features(images).norm(dim=1), torch.ones(5), atol=1e-5)


def test_refresh_mines_partitions_and_renews_them_every_epochs_per_partition():
    data = tiny_dataset()
    method = build()
    expected = method.batch_sampler(data, 10, 0, 0)
    seen = []
    for epoch in range(5):
        method.refresh(context_for(data, epoch))
        seen.append(method.triplets.clone())
    assert method.partition_number == 3  # partitions drawn at epochs 0, 2 and 4
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    nodes = 9 + 21
    assert seen[0].shape == (nodes * 2, 3) and len(expected) == nodes * 2 // 10
    anchors = set(seen[0][:, 0].tolist())
    assert set(np.flatnonzero(data.labels >= 0).tolist()) <= anchors and len(anchors) == nodes
    assert method.stats["triplets"] == nodes * 2


def test_batches_map_to_triplets_and_training_keeps_L_orthonormal():
    data = tiny_dataset()
    method = build()
    method.refresh(context_for(data, 0))
    sampler = method.batch_sampler(data, 10, 0, 0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6 and all(len(b) == 30 for b in batches)
    mined = {tuple(t) for t in method.triplets.tolist()}
    for batch in batches:
        assert all(t in mined for t in zip(batch[:10], batch[10:20], batch[20:]))
    groups = method.parameter_groups(1e-3, 0.0)
    assert all(p is not method.projection.weight for g in groups for p in g["params"])
    optimizer = torch.optim.Adam([p for g in groups for p in g["params"]], lr=1e-3)
    before = method.projection.weight.detach().clone()
    for indices in batches[:3]:
        losses = method.training_loss(batch_of(data, indices))
        optimizer.zero_grad()
        losses["loss"].backward()
        assert all(p.grad is not None for p in method.backbone.parameters())  # θ-step reaches the network
        method.before_optimizer_step()
        optimizer.step()
        method.after_step()
        assert torch.isfinite(losses["loss"]) and method.projection.orthogonality_error() < 1e-5
    assert method.projection.weight.grad is None  # L moves only through the L-step
    assert not torch.equal(before, method.projection.weight)


def test_retraction_solver_and_no_orth_ablation():
    data = tiny_dataset()
    for options, orthonormal in (({"l_solver": "retraction"}, True), ({"orthogonal": False}, False)):
        method = build(**options)
        method.refresh(context_for(data, 0))
        groups = method.parameter_groups(1e-2, 0.0)
        optimizer = torch.optim.SGD([p for g in groups for p in g["params"]], lr=1e-2)
        for indices in list(method.batch_sampler(data, 10, 0, 0))[:3]:
            loss = method.training_loss(batch_of(data, indices))["loss"]
            optimizer.zero_grad()
            loss.backward()
            method.before_optimizer_step()
            optimizer.step()
            method.after_step()
        assert (method.projection.orthogonality_error() < 1e-5) == orthonormal


def test_softmax_pretraining_stage_runs_once():
    data = tiny_dataset()
    method = build(pretrain_epochs=2, pretrain_batch_size=4)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    method.refresh(context_for(data, 0))
    assert method.pretrained_done and math.isfinite(method.stats["pretrain_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, method.backbone.parameters()))


def test_sampler_before_mining_and_bad_options():
    sampler = TripletBatchSampler(None, 100, expected=45_500)
    assert len(sampler) == 455  # an MNIST partition: (100 + 9,000) · 5 triplets
    with pytest.raises(RuntimeError, match="refresh"):
        list(sampler)
    with pytest.raises(ValueError, match="even"):
        build(k=5)
    with pytest.raises(ValueError, match="l_solver"):
        build(l_solver="adam")
    with pytest.raises(ValueError, match="no option"):
        build(sigma=1.0)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("ssdml-*.yaml")), ids=lambda p: p.stem)
def test_presets_name_real_options(path):
    preset = yaml.safe_load(path.read_text())
    assert preset["method"] == "ssdml" and preset["batch_size"] == 100
    config = SSDMLConfig(**preset["options"])
    assert config.gamma == 0.99 and config.k in (10, 50)


def _partition_loss(method: SSDML, data: DMLDataset) -> float:
    z = context_for(data, 0).embed(method.features)
    t = method.triplets
    return float(angular_triplet_loss(z[t[:, 0]], z[t[:, 1]], z[t[:, 2]], method.projection.weight.detach()))


@pytest.mark.parametrize("alternate, moves_at", [("per_epoch", [True, True, True, True]),
                                                 ("per_partition", [True, False, True, False])])
def test_l_step_per_epoch_or_per_partition_runs_in_refresh_on_all_triplets(alternate, moves_at):
    data = tiny_dataset()
    method = build(alternate=alternate)
    for epoch, moves in enumerate(moves_at):
        before_L = method.projection.weight.detach().clone()
        if method.triplets is not None:
            loss_before = _partition_loss(method, data)
        method.refresh(context_for(data, epoch))
        assert (not torch.equal(before_L, method.projection.weight)) == moves
        assert method.projection.orthogonality_error() < 1e-5
        if moves and epoch % 2 == 1:  # same partition: the L-step lowered its loss over every triplet
            assert _partition_loss(method, data) < loss_before
    batch = batch_of(data, next(iter(method.batch_sampler(data, 10, 0, 0))))
    before_L = method.projection.weight.detach().clone()
    losses = method.training_loss(batch)
    losses["loss"].backward()
    assert torch.equal(before_L, method.projection.weight)  # batches are θ-steps only
    assert method.projection.weight.grad is None and all(p.grad is not None for p in method.backbone.parameters())


def test_alternate_is_validated():
    with pytest.raises(ValueError, match="alternate must be one of"):
        build(alternate="per_step")
    with pytest.raises(ValueError, match="use alternate='per_batch'"):
        build(alternate="per_epoch", l_solver="retraction")


def test_hinge_form_is_zero_on_satisfied_triplets_and_the_margin_on_violated_ones():
    import torch

    from dmlkit.losses.angular_triplet import angular_margins, angular_triplet_loss

    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    positive = torch.tensor([[0.9, 0.1], [0.0, 1.0]])  # row 0: a close positive; row 1: a far one
    negative = torch.tensor([[-1.0, 0.0], [0.7, 0.7]], requires_grad=True)
    margins = angular_margins(anchor, positive, negative, None, 45.0)
    assert margins[0] < 0 < margins[1]
    hinge = angular_triplet_loss(anchor, positive, negative, None, 45.0, form="hinge")
    assert torch.isclose(hinge, margins[1])  # only the violated triplet counts
    hinge.backward()
    assert torch.equal(negative.grad[0], torch.zeros(2)) and negative.grad[1].abs().sum() > 0
    soft = angular_triplet_loss(anchor, positive, negative.detach(), None, 45.0)
    assert soft > hinge  # the softplus also charges the satisfied triplet
    with pytest.raises(ValueError, match="form"):
        angular_triplet_loss(anchor, positive, negative, None, 45.0, form="square")
