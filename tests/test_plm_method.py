"""PLM losses (Eqs. 6-9), proxies, gradient routing (Sec. 3.6.4) and the method with a tiny stand-in network."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dmlkit.losses.manifold import (
    ManifoldProxies,
    point_point_loss,
    proxy_neighbourhood_loss,
    proxy_point_loss,
)
from dmlkit.methods.base import BuildInfo, RefreshContext
from dmlkit.methods.plm import PLM, PLMConfig

D = 8


def _tiny(**options):
    options = {
        "embedding_dim": D,
        "n_proxies": 5,
        "piece_dim": 2,
        "piece_neighbours": 4,
        "group_size": 3,
        **options,
    }
    info = BuildInfo(channels=1, image_size=12, num_train=30, dataset="toy", views_preset="grey28")
    network = nn.Sequential(nn.Flatten(), nn.Linear(144, 16), nn.ReLU(), nn.Linear(16, D))
    return PLM(PLMConfig(**options), info, network=network)


def _batch(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(n, 1, 12, 12, generator=gen),
        "label": torch.full((n,), -1),
        "index": torch.arange(n),
    }


def _grads(method):
    def norm(params):
        grads = [p.grad for p in params if p.grad is not None]
        return sum(float(g.abs().sum()) for g in grads)

    return {
        "network": norm(method.network.parameters()),
        "momentum": norm(method.momentum_encoder.parameters()),
        "location": norm([method.proxies.location]),
        "basis": norm([p for n, p in method.proxies.named_parameters() if n != "location"]),
    }


# -- losses ------------------------------------------------------------------------------------
def test_point_loss_zero_at_fixed_point_and_hand_value():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    dist = torch.cdist(z, z)
    s = 1 - dist / 2.0  # distances equal δ(1 - s) with δ = 2
    assert point_point_loss(z, s, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    s_one = torch.ones(3, 3)  # every target distance 0: sum over ordered pairs of d²
    assert point_point_loss(z, s_one, 2.0).item() == pytest.approx(2 * (2 + 2 + 4), abs=1e-5)
    assert point_point_loss(z, s_one, 2.0, "mean").item() == pytest.approx(8 / 3, abs=1e-5)


def test_proxy_losses_hand_values():
    z = torch.tensor([[1.0, 0.0]])
    proxies = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    s = torch.tensor([[0.5, 0.25]])
    # (2 * 0.5 - sqrt 2)² + (2 * 0.75 - 0)²
    assert proxy_point_loss(z, proxies, s).item() == pytest.approx((1 - math.sqrt(2)) ** 2 + 1.5**2, abs=1e-5)
    cos = torch.tensor([[[1.0, 0.0], [0.5, 0.25]]])
    assert proxy_neighbourhood_loss(s, cos).item() == pytest.approx(0.25 + 0.25 + 0.0 + 0.0625, abs=1e-6)
    with pytest.raises(ValueError, match="N_rho"):
        proxy_point_loss(z, proxies, torch.ones(1, 3))
    with pytest.raises(ValueError, match="reduction"):
        proxy_neighbourhood_loss(s, cos, "none")


@pytest.mark.parametrize("param", ["qr", "orthogonal", "retract"])
def test_proxy_bases_stay_orthonormal_after_100_steps(param):
    torch.manual_seed(0)
    proxies = ManifoldProxies(7, 10, 3, param)
    optimizer = torch.optim.Adam(proxies.parameters(), lr=5e-2)
    target = torch.randn(7, 10, 3)
    for _ in range(100):
        loss = (proxies.bases() - target).square().sum() + proxies.locations().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if param == "retract":
            proxies.retract()
    psi = proxies.bases()
    assert (psi.transpose(1, 2) @ psi - torch.eye(3)).abs().max() < 1e-5
    assert (psi - target).abs().max() > 0  # it moved, and stayed on the Stiefel manifold
    torch.testing.assert_close(proxies.locations().norm(dim=1), torch.ones(7))


# -- method ------------------------------------------------------------------------------------
def test_config_defaults_are_section_4_1():
    cfg = PLMConfig()
    assert (
        cfg.n_alpha,
        cfg.n_beta,
        cfg.n_proxies,
        cfg.delta,
        cfg.piece_dim,
        cfg.threshold,
        cfg.momentum,
    ) == (4.0, 0.5, 100, 2.0, 3, 0.9, 0.999)
    assert PLM.defaults["batch_size"] == 100 and PLM.defaults["lr"] == 5e-4 and PLM.defaults["epochs"] == 200
    assert PLM.uses_labels == "none"
    with pytest.raises(ValueError, match="similarity"):
        PLMConfig(similarity="cosine")
    with pytest.raises(ValueError, match="no option"):
        PLM.from_options({"n_gamma": 1}, BuildInfo())


def test_training_loss_finite_with_named_parts():
    method = _tiny()
    losses = method.training_loss(_batch())
    assert set(losses) == {"loss", "point", "proxy", "neighbourhood"}
    assert all(torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(losses["loss"], losses["point"] + losses["proxy"] + losses["neighbourhood"])


@pytest.mark.parametrize(
    "part,expected",
    [("point", {"network"}), ("proxy", {"network", "location"}), ("neighbourhood", {"basis"})],
)
def test_gradient_routing_per_loss(part, expected):
    method = _tiny()
    method.zero_grad()
    method.training_loss(_batch())[part].backward()
    grads = _grads(method)
    assert {name for name, value in grads.items() if value > 0} == expected


def test_proxy_similarity_gradient_option_reaches_bases_from_proxy_loss():
    method = _tiny(proxy_sim_grad=True)
    method.training_loss(_batch())["proxy"].backward()
    grads = _grads(method)
    assert grads["basis"] > 0 and grads["location"] > 0


def test_momentum_encoder_follows_only_eq1():
    method = _tiny(momentum=0.0)
    optimizer = torch.optim.SGD(
        [g for group in method.parameter_groups(0.1, 0.0) for g in group["params"]], lr=0.1
    )
    method.training_loss(_batch())["loss"].backward()
    optimizer.step()
    assert all(p.grad is None for p in method.momentum_encoder.parameters())
    method.after_step()  # γ = 0 copies θ
    for p, q in zip(method.momentum_encoder.parameters(), method.network.parameters()):
        torch.testing.assert_close(p, q)
    frozen = _tiny(momentum=1.0)
    before = [p.clone() for p in frozen.momentum_encoder.parameters()]
    with torch.no_grad():
        for p in frozen.network.parameters():
            p.add_(1.0)
    frozen.after_step()  # γ = 1 keeps φ
    for p, q in zip(frozen.momentum_encoder.parameters(), before):
        torch.testing.assert_close(p, q)


def test_parameter_groups_give_proxies_100x_lr():
    groups = _tiny().parameter_groups(5e-4, 1e-4)
    assert groups[0]["lr"] == 5e-4 and groups[1]["lr"] == pytest.approx(5e-2)
    assert len(groups[1]["params"]) == 2 and groups[1]["weight_decay"] == 0.0


def test_bases_orthonormal_after_training_steps():
    method = _tiny()
    optimizer = torch.optim.Adam(method.parameter_groups(5e-4, 0.0))
    for step in range(100):
        optimizer.zero_grad()
        method.training_loss(_batch(seed=step % 4))["loss"].backward()
        optimizer.step()
        method.after_step()
    psi = method.proxies.bases()
    assert (psi.transpose(1, 2) @ psi - torch.eye(2)).abs().max() < 1e-5


def _context(n=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 12, 12, generator=gen) * 255).to(torch.uint8).numpy()
    from dmlkit.data.base import DMLDataset

    data = DMLDataset(images, np.full(n, -1))

    def embed(fn, dataset=None):
        with torch.no_grad():
            return fn(torch.stack([data.image(i) for i in range(n)]))

    def knn(x, k):
        d = torch.cdist(x, x)
        d.fill_diagonal_(-1)
        dist, idx = d.topk(k, largest=False)
        return dist, idx

    return data, RefreshContext(
        epoch=0, train=data, embed=embed, knn=knn, device=torch.device("cpu"), seed=seed
    )


def test_refresh_builds_neighbour_batches_and_initialises_proxies_from_data():
    method = _tiny()
    data, context = _context()
    with pytest.raises(RuntimeError, match="refresh"):
        method.batch_sampler(data, 6, 0, 0)
    method.refresh(context)
    embeddings = context.embed(lambda im: nn.functional.normalize(method.momentum_encoder(im), dim=1))
    rho = method.proxies.location.detach()
    # every proxy is the momentum embedding of one training image
    assert torch.cdist(rho, embeddings).min(1).values.max() < 1e-5
    batches = list(method.batch_sampler(data, 6, 0, 0))
    assert len(batches) == 5 and all(len(b) == 6 for b in batches)
    first = batches[0]
    assert first[:3] == method.neighbours[first[0]].tolist()  # a group is the query then its neighbours
    method.proxies.location.data.add_(1.0)
    method.refresh(context)  # later refreshes never re-initialise the proxies
    assert torch.cdist(method.proxies.location.detach(), embeddings).min(1).values.min() > 1e-3
    halved = _tiny(batch_unit="embeddings")
    halved.refresh(context)
    assert all(
        len(b) == 6 for b in halved.batch_sampler(data, 12, 0, 0)
    )  # 12 embeddings = 6 images x 2 views


@pytest.mark.parametrize(
    "options",
    [
        {"selection": False},
        {"similarity": "binary"},
        {"same_image": True},
        {"cos_def": "sq", "reduction": "mean"},
        {"proxy_param": "orthogonal"},
    ],
)
def test_ablations_and_options_train(options):
    method = _tiny(**options)
    losses = method.training_loss(_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert _grads(method)["network"] > 0


def test_embed_is_unit_norm_network_output():
    method = _tiny()
    out = method.embed(_batch()["image"])
    assert out.shape == (6, D)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(6))


def test_pseudo_supervision_feeds_quality_table():
    from dmlkit.evaluation.quality import quality_table

    gen = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, D, generator=gen), dim=1)
    labels = torch.arange(4).repeat_interleave(30)
    x = centres[labels] + 0.05 * torch.randn(120, D, generator=gen)
    method = _tiny()
    out = method.pseudo_supervision(x[:40])
    assert out["groups"].shape == (40, 5) and (out["groups"][:, 0] == torch.arange(40)).all()
    assert out["similarity"].shape == (40, 40)
    rows = {
        r["method"]: r
        for r in quality_table(
            x, labels, {"plm": method.pseudo_supervision}, batch_size=60, baselines=("kmeans",)
        )
    }
    assert rows["plm"]["purity"] > 0.95 and rows["plm"]["correlation"] > 0.5
    assert 2 <= rows["plm"]["mean_group_size"] <= 5
