"""DRML's base losses and miners (spec DRML.md §3, §10.6), against hand cases and the definitions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dmlkit.losses.supervised import (
    build_metric_loss,
    distance_weighted_triplets,
    distance_weights,
    hard_triplets,
    semihard_triplets,
    unit_sphere_distances,
)


def _random_batch(n=24, dim=8, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen), torch.arange(n) % classes


# --- miners ------------------------------------------------------------------------------------------


def test_hard_miner_hand_case():
    # 4 items; labels 0 0 1 1. Max positive distance = 0.3 -> clamp c = 0.3.
    # anchor 0: negatives 2 (d 0.1 -> 0.3) and 3 (d 0.25 -> 0.3): tie after clamping -> first index, 2
    # anchor 2: negatives 0 (0.1 -> 0.3), 1 (0.6): nearest 0
    dist = torch.tensor([
        [0.0, 0.2, 0.1, 0.25],
        [0.2, 0.0, 0.9, 0.7],
        [0.1, 0.9, 0.0, 0.3],
        [0.25, 0.7, 0.3, 0.0],
    ])
    a, p, n = hard_triplets(dist, torch.tensor([0, 0, 1, 1]))
    assert a.tolist() == [0, 1, 2, 3]
    assert p.tolist() == [1, 0, 3, 2]  # one positive each, so the random pick is forced
    assert n.tolist() == [2, 3, 0, 0]  # anchor 1: 0.9 vs 0.7 -> 3; anchor 3: 0.25 vs 0.7 -> 0
    # with a larger positive spread the clamp is the 0.5 cutoff
    dist2 = dist.clone()
    dist2[0, 1] = dist2[1, 0] = 0.8
    assert hard_triplets(dist2, torch.tensor([0, 0, 1, 1]))[2].tolist() == [2, 3, 0, 0]


def test_hard_miner_never_returns_a_positive_and_drops_anchors_without_negatives():
    emb, labels = _random_batch()
    labels[-3:] = 9  # class 9 exists 3 times
    a, p, n = hard_triplets(unit_sphere_distances(emb), labels)
    assert (labels[a] == labels[p]).all() and (a != p).all()
    assert (labels[a] != labels[n]).all()
    one_class = hard_triplets(torch.rand(4, 4), torch.zeros(4, dtype=torch.long))
    assert len(one_class[0]) == 0


def test_semihard_negatives_lie_in_the_band():
    for seed in range(5):
        emb, labels = _random_batch(seed=seed)
        dist = unit_sphere_distances(emb)
        a, p, n = semihard_triplets(dist, labels, margin=0.2)
        assert len(a) > 0
        assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all() and (a != p).all()
        d_ap, d_an = dist[a, p], dist[a, n]
        assert (d_ap < d_an).all() and (d_an < d_ap + 0.2).all()


def test_semihard_drops_anchors_without_a_band_negative():
    dist = torch.tensor([[0.0, 0.1, 1.5], [0.1, 0.0, 1.5], [1.5, 1.5, 0.0]])
    a, _, _ = semihard_triplets(dist, torch.tensor([0, 0, 1]))
    assert len(a) == 0


def test_distance_weighted_never_draws_positives_when_masked():
    emb, labels = _random_batch(n=16, classes=2)
    dist = unit_sphere_distances(emb)
    for _ in range(20):
        a, p, n = distance_weighted_triplets(dist, labels, dim=8)
        assert (labels[a] != labels[n]).all()
        assert (labels[a] == labels[p]).all() and (a != p).all()


def test_distance_weighted_probabilities_follow_inverse_q():
    # anchor 0 (class 0) with positive 1; negatives 2, 3 at distances 0.8 and 1.6; n = 4
    dist = torch.tensor([
        [0.0, 0.1, 0.8, 1.6],
        [0.1, 0.0, 1.9, 1.9],
        [0.8, 1.9, 0.0, 0.1],
        [1.6, 1.9, 0.1, 0.0],
    ])
    labels = torch.tensor([0, 0, 1, 1])

    def inv_q(d, n=4):
        return math.exp(-((n - 2) * math.log(d) + (n - 3) / 2 * math.log(1 - d * d / 4)))

    w = distance_weights(dist, labels, dim=4)
    assert w[0, 2].item() == pytest.approx(1.0)  # the row maximum: q(0.8) < q(1.6) for n = 4
    assert w[0, 3].item() == pytest.approx(inv_q(1.6) / inv_q(0.8), rel=1e-6)  # float32 distances
    assert (w[0, :2] == 0).all() and (w[2, 2:] == 0).all()  # self and positives masked
    # distances below the cutoff are clamped: 0.1 and 0.3 weigh the same
    dist_c = dist.clone()
    dist_c[0, 2] = dist_c[2, 0] = 0.1
    dist_c[0, 3] = dist_c[3, 0] = 0.3
    assert distance_weights(dist_c, labels, dim=4)[0, 2:].tolist() == [1.0, 1.0]
    # d = 2 gives an infinite 1/q: weight 0, never NaN
    dist_2 = dist.clone()
    dist_2[0, 3] = dist_2[3, 0] = 2.0
    assert distance_weights(dist_2, labels, dim=4)[0].tolist() == [0.0, 0.0, 1.0, 0.0]
    # the draws follow the weights
    torch.manual_seed(0)
    draws = torch.stack([distance_weighted_triplets(dist, labels, dim=4)[2][0] for _ in range(100)])
    expect = inv_q(0.8) / (inv_q(0.8) + inv_q(1.6))  # 0.724; 100 draws: sd 0.045
    assert (draws == 2).float().mean().item() == pytest.approx(expect, abs=0.15)


def test_distance_weighted_unmasked_keeps_positive_candidates_like_gedml():
    # with n = 3 the weights are 1/d on negatives and exp(0) = 1 on positives (before normalisation)
    dist = torch.tensor([[0.0, 0.6, 1.0], [0.6, 0.0, 1.0], [1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    torch.manual_seed(0)
    negs = torch.cat([distance_weighted_triplets(dist, labels, dim=3, mask_positives=False)[2] for _ in range(30)])
    assert (labels[negs] == 0).any()  # GeDML's quirk: positives (and self) can be drawn
    negs = torch.cat([distance_weighted_triplets(dist, labels, dim=3)[2] for _ in range(30)])
    assert (labels[negs] == 1).all()


# --- losses ------------------------------------------------------------------------------------------


def test_triplet_all_zero_hinges_give_zero_not_nan():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    loss = build_metric_loss("triplet", 0, 2)(emb, torch.tensor([0, 0, 1, 1]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_triplet_averages_over_non_zero_terms():
    emb, labels = _random_batch(n=12, dim=4, classes=3)
    fn = build_metric_loss("triplet", 0, 4, miner="semihard", triplet_margin=1.0)
    torch.manual_seed(3)
    a, p, n = fn.mine(emb, labels)
    z = F.normalize(emb, dim=1)
    hinge = ((z[a] - z[p]).norm(dim=1) - (z[a] - z[n]).norm(dim=1) + 1.0).clamp_min(0)
    expect = hinge[hinge > 0].mean()
    assert torch.allclose(fn.loss(emb, labels, (a, p, n)), expect, atol=1e-5)


def test_margin_loss_matches_definition():
    emb, labels = _random_batch(n=12, dim=4, classes=3)
    fn = build_metric_loss("margin", 3, 4)
    assert fn.miner == "distance_weighted" and fn.miner_kw["dim"] == 4
    beta = fn.loss.beta
    with torch.no_grad():
        beta.copy_(torch.tensor([1.0, 1.2, 0.9]))
    torch.manual_seed(4)
    a, p, n = fn.mine(emb, labels)
    z = F.normalize(emb, dim=1)
    b = beta[labels[a]]
    pos = (0.2 + (z[a] - z[p]).norm(dim=1) - b).clamp_min(0)
    neg = (0.2 - (z[a] - z[n]).norm(dim=1) + b).clamp_min(0)
    expect = (pos.sum() + neg.sum()) / ((pos > 0).sum() + (neg > 0).sum())
    assert torch.allclose(fn.loss(emb, labels, (a, p, n)), expect, atol=1e-5)


def test_proxy_anchor_hand_case_tends_to_zero():
    # two classes, proxies ±e1; each sample sits on its proxy: s+ = 1, s- = -1. With δ = 0.1:
    # L = log(1 + e^{-α(1-δ)}) + (1/2)·2·log(1 + e^{α(-1+δ)}) = 2 log(1 + e^{-0.9α})
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1])
    values = []
    for alpha in (1.0, 8.0, 32.0):
        fn = build_metric_loss("proxy_anchor", 2, 2, pa_delta=0.1, pa_alpha=alpha)
        with torch.no_grad():
            fn.loss.proxies.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        value = fn(emb, labels).item()
        assert value == pytest.approx(2 * math.log1p(math.exp(-0.9 * alpha)), rel=1e-5, abs=1e-7)
        values.append(value)
    assert values[0] > values[1] > values[2] and values[2] < 1e-7  # 2 log(1 + e^-28.8) ≈ 6e-13


def test_proxy_anchor_matches_definition_on_random_data():
    emb, labels = _random_batch(n=10, dim=6, classes=4)
    labels[labels == 3] = 0  # class 3 has no positives in the batch
    fn = build_metric_loss("proxy_anchor", 4, 6, pa_delta=0.2, pa_alpha=64.0)
    proxies = fn.loss.proxies.detach()
    s = F.normalize(emb, dim=1) @ F.normalize(proxies, dim=1).T  # [B, C]
    pos = F.one_hot(labels, 4).bool()
    with_pos = pos.any(0)
    pos_term = torch.log1p((torch.exp(-64 * (s - 0.2)) * pos).sum(0))[with_pos].sum() / with_pos.sum()
    neg_term = torch.log1p((torch.exp(64 * (s + 0.2)) * ~pos).sum(0)).sum() / 4
    assert torch.allclose(fn(emb, labels), pos_term + neg_term, rtol=1e-4)


def test_cosface_with_zero_margin_is_scaled_normalised_softmax():
    emb, labels = _random_batch(n=10, dim=6, classes=4)
    fn = build_metric_loss("cosface", 4, 6, cosface_m=0.0, cosface_s=16.0)
    table = fn.loss.W.detach().T  # [C, D]
    logits = 16.0 * F.normalize(emb, dim=1) @ F.normalize(table, dim=1).T
    assert torch.allclose(fn(emb, labels), F.cross_entropy(logits, labels), atol=1e-4)
    fn_m = build_metric_loss("cosface", 4, 6, cosface_m=0.35, cosface_s=16.0)
    with torch.no_grad():
        fn_m.loss.W.copy_(fn.loss.W)
    margin = 16.0 * 0.35 * F.one_hot(labels, 4)
    assert torch.allclose(fn_m(emb, labels), F.cross_entropy(logits - margin, labels), atol=1e-4)


def test_proxy_initialisations():
    torch.manual_seed(0)
    normal = build_metric_loss("proxy_anchor", 512, 128, proxy_init="kaiming_normal").loss.proxies
    uniform = build_metric_loss("proxy_anchor", 512, 128, proxy_init="kaiming_uniform").loss.proxies
    assert normal.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)  # fan_out = C
    bound = 1 / math.sqrt(128)  # a = √5, fan_in = D
    assert uniform.abs().max().item() <= bound and uniform.abs().max().item() > 0.95 * bound
    cos = build_metric_loss("cosface", 512, 128, proxy_init="kaiming_uniform").loss.W
    assert cos.shape == (128, 512) and cos.abs().max().item() <= bound


def test_pml_names_are_accepted_and_bad_names_rejected():
    assert build_metric_loss("ProxyAnchorLoss", 3, 4).name == "proxy_anchor"
    assert build_metric_loss("TripletMarginLoss", 0, 4).name == "triplet"
    assert build_metric_loss("CosFaceLoss", 3, 4).name == "cosface"
    assert build_metric_loss("MarginLoss", 3, 4).name == "margin"
    with pytest.raises(ValueError, match="unknown base loss"):
        build_metric_loss("npair", 3, 4)
    with pytest.raises(ValueError, match="num_classes"):
        build_metric_loss("proxy_anchor", 0, 4)
    with pytest.raises(ValueError, match="embeddings"):
        build_metric_loss("cosface", 3, 4)(torch.randn(2, 5), torch.tensor([0, 1]))
