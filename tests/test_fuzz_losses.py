"""Property fuzzing of the losses (``dmlkit.losses``) with hypothesis.

Degenerate batches (duplicates, identical points, zero vectors, huge/tiny scales, one class, no
labels, odd sizes) must give finite, non-negative losses (where the loss is a sum of squares or
softplus terms) with finite gradients, or a ValueError naming the problem.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmlkit.losses import angular_triplet as at
from dmlkit.losses import classical as cl
from dmlkit.losses import manifold as mf
from dmlkit.losses import relaxed_contrastive as rc
from dmlkit.losses import supervised as sv
from tests.fuzz_helpers import FUZZ, KINDS, finite, points


def grad_of(loss: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


# ------------------------------------------------------------------ STML relaxed contrastive and KL
@FUZZ
@given(n=st.integers(2, 12), d=st.integers(1, 6), kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       delta=st.sampled_from([0.0, 0.9, 1.0, 2.0]), normaliser=st.sampled_from(["n(n-1)", "n"]),
       normalize=st.booleans(), temperature=st.sampled_from([0.1, 1.0, 4.0]))
def test_relaxed_contrastive_and_kl_are_finite_with_finite_gradients(n, d, kind, seed, delta, normaliser, normalize,
                                                                    temperature):
    e = points(n, d, kind, seed).requires_grad_(True)
    g = points(n, d + 1, kind, seed + 1).requires_grad_(True)
    W = torch.rand(n, n, generator=torch.Generator().manual_seed(seed))
    W = 0.5 * (W + W.T)
    loss = rc.relaxed_contrastive_loss(e, W, delta=delta, normaliser=normaliser, normalize=normalize)
    assert finite(loss) and float(loss) >= 0.0
    (ge,) = grad_of(loss, e)
    assert finite(ge)
    dist = rc.normalised_distances(e.detach(), normalize)
    assert finite(dist) and float(dist.min()) >= 0.0 and float(dist.diagonal().abs().max()) == 0.0
    kl = rc.self_distillation_kl(e, g, temperature=temperature, normalize=normalize)
    assert finite(kl) and float(kl) >= -1e-5
    gf, gg = grad_of(kl, e, g)
    assert finite(gf) and float(gg.abs().max()) == 0.0, "g must be detached"
    assert float(rc.self_distillation_kl(e.detach(), e.detach(), temperature)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: rc.relaxed_contrastive_loss(torch.randn(1, 3), torch.ones(1, 1)), "n >= 2"),
    (lambda: rc.relaxed_contrastive_loss(torch.randn(4, 3), torch.ones(3, 3)), "W must match the distance matrix"),
    (lambda: rc.relaxed_contrastive_loss(torch.randn(4, 3), torch.ones(4, 4), normaliser="n^2"), "normaliser must be"),
    (lambda: rc.self_distillation_kl(torch.randn(4, 3), torch.randn(5, 3)), "same rows"),
    (lambda: rc.self_distillation_kl(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0), "temperature must be"),
])
def test_relaxed_contrastive_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------ PLM losses
@FUZZ
@given(b=st.integers(2, 10), n_proxies=st.integers(1, 5), d=st.integers(2, 6), m=st.integers(1, 3),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000), delta=st.sampled_from([0.5, 2.0]),
       reduction=st.sampled_from(["sum", "mean"]), parametrisation=st.sampled_from(["qr", "orthogonal", "retract"]))
def test_manifold_losses_are_finite_with_finite_gradients(b, n_proxies, d, m, kind, seed, delta, reduction,
                                                          parametrisation):
    from dmlkit.targets.manifold import basis_angle_cosine, batch_pieces, point_similarity, proxy_similarity

    m = min(m, d)
    z = points(b, d, kind, seed).requires_grad_(True)
    pieces = batch_pieces(torch.nn.functional.normalize(z.detach(), dim=1), m=m, k=4)
    proxies = mf.ManifoldProxies(n_proxies, d, m, parametrisation=parametrisation,
                                 generator=torch.Generator().manual_seed(seed))
    rho, psi = proxies.locations(), proxies.bases()
    s_pp = point_similarity(pieces).detach()
    s_xp = proxy_similarity(pieces, rho, psi)
    losses = {
        "point_point": mf.point_point_loss(z, s_pp, delta, reduction),
        "proxy_point": mf.proxy_point_loss(z, rho, s_xp.detach(), delta, reduction),
        "proxy_neighbourhood": mf.proxy_neighbourhood_loss(s_xp.detach(), basis_angle_cosine(pieces.bases, psi),
                                                           reduction),
    }
    for name, loss in losses.items():
        assert finite(loss) and float(loss) >= 0.0, name
    total = sum(losses.values())
    grads = grad_of(total, z, *proxies.parameters())
    assert all(finite(gr) for gr in grads)
    proxies.retract()
    basis = proxies.bases().detach()
    eye = torch.eye(m).expand(n_proxies, m, m)
    assert torch.allclose(basis.transpose(1, 2) @ basis, eye, atol=1e-4)


@pytest.mark.parametrize("call, message", [
    (lambda: mf.point_point_loss(torch.randn(4, 3), torch.ones(3, 3)), r"similarity must be \[B, B\]"),
    (lambda: mf.proxy_point_loss(torch.randn(4, 3), torch.randn(2, 3), torch.ones(4, 3)), r"\[B, N_rho\]"),
    (lambda: mf.proxy_neighbourhood_loss(torch.ones(4, 2), torch.ones(4, 3, 2)), r"cosines must be \[B, N_rho, m\]"),
    (lambda: mf.point_point_loss(torch.randn(4, 3), torch.ones(4, 4), reduction="max"), "reduction='max' is not one of"),
    (lambda: mf.ManifoldProxies(3, 4, 5), "m=5 exceeds the embedding dimension 4"),
    (lambda: mf.ManifoldProxies(3, 4, 2, parametrisation="svd"), "parametrisation 'svd' is not one of"),
])
def test_manifold_losses_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------ SSDML angular triplet
@FUZZ
@given(t=st.integers(0, 10), d=st.integers(1, 6), l=st.integers(1, 6), kind=st.sampled_from(KINDS),
       seed=st.integers(0, 10_000), alpha=st.sampled_from([1.0, 40.0, 45.0, 89.0]), use_l=st.booleans(),
       reduction=st.sampled_from(["sum", "mean"]))
def test_angular_triplet_loss_is_finite_and_non_negative(t, d, l, kind, seed, alpha, use_l, reduction):
    x = points(3 * t, d, kind, seed)
    if kind == "huge":
        x = x * 1e-4  # tan²(89°)·(1e4)² overflows float32: unit-norm features are the documented input
    a, p, n = (x[i * t:(i + 1) * t].clone().requires_grad_(True) for i in range(3))
    L = None
    if use_l:
        l = min(l, d)
        L = torch.linalg.qr(torch.randn(d, l, generator=torch.Generator().manual_seed(seed))).Q.requires_grad_(True)
    loss = at.angular_triplet_loss(a, p, n, L, alpha, reduction)
    if t == 0 and reduction == "mean":  # see test_angular_triplet_mean_over_no_triplets
        return
    assert finite(loss) and float(loss) >= 0.0
    grads = grad_of(loss, a, p, n, *([L] if L is not None else []))
    assert all(finite(gr) for gr in grads)


def test_angular_triplet_mean_over_no_triplets():
    empty = torch.zeros(0, 3, requires_grad=True)
    loss = at.angular_triplet_loss(empty, empty, empty, reduction="mean")
    assert finite(loss) and float(loss) == 0.0


@FUZZ
@given(t=st.integers(1, 8), d=st.integers(2, 5), l=st.integers(1, 5), seed=st.integers(0, 10_000),
       orthogonal=st.booleans(), kind=st.sampled_from(["random", "identical", "zeros", "duplicates"]))
def test_stiefel_minimisation_stays_finite_and_orthonormal(t, d, l, seed, orthogonal, kind):
    l = min(l, d)
    x = torch.nn.functional.normalize(points(3 * t, d, kind, seed, dtype=torch.float64), dim=1)
    a, p, n = x[:t], x[t:2 * t], x[2 * t:]
    L0 = torch.linalg.qr(torch.randn(d, l, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).Q
    def cost(L: torch.Tensor) -> torch.Tensor:
        return at.angular_triplet_loss(a, p, n, L, 40.0)

    L = at.minimize_stiefel(cost, L0, max_iter=5, orthogonal=orthogonal)
    assert finite(L) and float(cost(L)) <= float(cost(L0)) + 1e-9
    if orthogonal:
        assert torch.allclose(L.T @ L, torch.eye(l, dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("call, message", [
    (lambda: at.angular_triplet_loss(torch.randn(2, 3), torch.randn(2, 3), torch.randn(3, 3)), r"must all be \[T, d\]"),
    (lambda: at.angular_triplet_loss(*torch.randn(3, 2, 3), alpha_deg=90.0), r"alpha_deg must lie in \(0, 90\)"),
    (lambda: at.angular_triplet_loss(*torch.randn(3, 2, 3), alpha_deg=0.0), r"alpha_deg must lie in \(0, 90\)"),
    (lambda: at.angular_triplet_loss(*torch.randn(3, 2, 3), reduction="max"), "reduction must be 'sum' or 'mean'"),
])
def test_angular_triplet_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------ classical baselines (LRML, ISDML, SERAPH, APLLR, APIT)
def _labels(b: int, seed: int, classes: int, labeled: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(b, generator=g) < labeled, torch.randint(0, classes, (b,), generator=g), -1)


@FUZZ
@given(b=st.integers(2, 12), d=st.integers(1, 5), kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       classes=st.integers(1, 4), labeled=st.floats(0.0, 1.0), k=st.integers(1, 4), with_metric=st.booleans())
def test_classical_objectives_are_finite_with_finite_gradients(b, d, kind, seed, classes, labeled, k, with_metric):
    x = points(b, d, kind, seed, dtype=torch.float64)
    if kind == "huge":
        x = x * 1e-4
    labels = _labels(b, seed, classes, labeled)
    k = min(k, b - 1)
    dist = torch.cdist(x, x).square()
    dist.fill_diagonal_(float("inf"))
    sq, nbr = dist.topk(k, dim=1, largest=False)
    heat = cl.heat_kernel_weights(sq)
    assert finite(heat) and float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0
    edges, weights = cl.undirected_edges(nbr, heat)
    assert bool((edges[:, 0] < edges[:, 1]).all()) and finite(weights)
    metric = None
    if with_metric:
        A = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        metric = (A @ A.T / d).requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    outs = {
        "lrml": cl.lrml_loss(xg, labels, edges, weights, metric=metric),
        "seraph": cl.seraph_loss(xg, labels, trace_weight=0.1, metric=metric),
        "affinity": cl.affinity_laplacian_loss(xg, edges, 2 * weights - 1, metric=metric),
    }
    for name, out in outs.items():
        assert all(finite(v) for v in out.values()), name
        grads = grad_of(out["loss"], xg, *([metric] if metric is not None else []))
        assert all(finite(gr) for gr in grads), name
    assert float(outs["seraph"]["likelihood"]) >= 0.0 and float(outs["seraph"]["entropy"]) >= 0.0
    scatter = cl.lrml_scatter(x, labels, edges, weights)
    eye = torch.eye(d, dtype=torch.float64)
    assert float(cl.lrml_loss(x, labels, edges, weights, metric=eye)["loss"]) == pytest.approx(
        float(torch.trace(scatter)), rel=1e-6, abs=1e-9)
    M = cl.lrml_metric_step(scatter)
    assert finite(M) and float(torch.linalg.eigvalsh(M).min()) > 0.0
    assert float(torch.linalg.slogdet(M).logabsdet) == pytest.approx(0.0, abs=1e-6)
    psd = cl.project_psd(scatter)
    assert float(torch.linalg.eigvalsh(psd).min()) >= -1e-9
    root = cl.matrix_sqrt(psd)
    assert torch.allclose(root @ root, psd, atol=1e-6 * max(1.0, float(psd.abs().max())))
    c_w = cl.affinity_scatter(x, edges, 2 * weights - 1)
    assert finite(cl.affinity_metric_step(eye, c_w))
    assert finite(cl.seraph_metric_step(x, labels, eye, steps=2))


@FUZZ
@given(b=st.integers(2, 12), d=st.integers(1, 4), kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       classes=st.integers(1, 3), labeled=st.floats(0.0, 1.0))
def test_classical_priors_are_psd_or_refuse_clearly(b, d, kind, seed, classes, labeled):
    z = torch.nn.functional.normalize(points(b, d, kind, seed, dtype=torch.float64), dim=1)
    labels = _labels(b, seed, classes, labeled)
    pairs = cl.batch_pairs(labels)
    if len(pairs["similar"]) == 0 or len(pairs["dissimilar"]) == 0:
        for prior in (cl.kissme_prior, cl.itml_prior):
            with pytest.raises(ValueError, match="needs at least one similar and one dissimilar labeled pair"):
                prior(z, labels)
        return
    for prior in (cl.kissme_prior(z, labels), cl.itml_prior(z, labels, sweeps=2)):
        assert finite(prior) and torch.allclose(prior, prior.T, atol=1e-8)
        assert float(torch.linalg.eigvalsh(prior).min()) >= -1e-8


def test_itml_prior_with_coincident_pairs():
    """Regression (found by this fuzzing): >= 5% coincident labeled pairs made a percentile target 0 -> NaN."""
    z = torch.tensor([[1.0], [-1.0], [-1.0], [1.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 1, 1])
    assert finite(cl.itml_prior(z, labels, sweeps=2))


@FUZZ
@given(n=st.integers(2, 12), d=st.integers(1, 4), kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       k=st.integers(1, 4))
def test_isdml_density_graph_is_finite(n, d, kind, seed, k):
    z = points(n, d, kind, seed, dtype=torch.float64)
    k = min(k, n - 1)
    dist = torch.cdist(z, z).square()
    dist.fill_diagonal_(float("inf"))
    sq, nbr = dist.topk(k, dim=1, largest=False)
    sigma = cl.isdml_bandwidth(z, sq[:, 0], block_size=5)
    assert sigma >= 0.0
    weights = cl.density_graph_weights(sq, sigma)
    assert finite(weights) and float(weights.min()) >= 0.0, (sigma, weights)
    _, values = cl.undirected_edges(nbr, weights, reduce="half_sum")
    assert finite(values)


def test_isdml_density_graph_of_identical_points():
    """Regression (found by this fuzzing): sigma = 0 on a collapsed partition gave 0/0 = NaN weights."""
    z = torch.ones(4, 3, dtype=torch.float64)
    sq = torch.zeros(4, 2, dtype=torch.float64)
    sigma = cl.isdml_bandwidth(z, sq[:, 0])
    assert finite(cl.density_graph_weights(sq, sigma))


# ------------------------------------------------------------------ supervised base losses and miners (DRML, baselines)
@settings(FUZZ, max_examples=15)
@given(b=st.integers(0, 10), d=st.integers(2, 6), kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       classes=st.integers(1, 4), name=st.sampled_from(["triplet", "margin", "proxy_anchor", "cosface"]),
       miner=st.sampled_from(["auto", "hard", "semihard", "distance_weighted"]))
def test_supervised_losses_and_miners_are_finite(b, d, kind, seed, classes, name, miner):
    if name in ("proxy_anchor", "cosface"):
        miner = "auto"
    torch.manual_seed(seed)
    loss_fn = sv.build_metric_loss(name, classes, d, miner=miner)
    x = points(b, d, kind, seed).requires_grad_(True)
    labels = torch.randint(0, classes, (b,), generator=torch.Generator().manual_seed(seed))
    loss = loss_fn(x, labels)
    assert finite(loss) and float(loss) >= 0.0, (name, miner, float(loss))
    grads = grad_of(loss, x, *loss_fn.parameters())
    assert all(finite(gr) for gr in grads)
    if b >= 2 and loss_fn.miner != "none":
        anchors, positives, negatives = loss_fn.mine(x.detach(), labels)
        assert bool((anchors != positives).all())
        assert bool((labels[anchors] == labels[positives]).all() and (labels[anchors] != labels[negatives]).all())
    if b >= 1:
        w = sv.distance_weights(sv.unit_sphere_distances(x.detach()), labels, d)
        assert finite(w) and float(w.min()) >= 0.0 and float(w.max()) <= 1.0


@pytest.mark.parametrize("call, message", [
    (lambda: sv.build_metric_loss("contrastive", 3, 4), "unknown base loss 'contrastive'"),
    (lambda: sv.build_metric_loss("triplet", 3, 0), "embedding_dim must be positive"),
    (lambda: sv.build_metric_loss("proxy_anchor", 0, 4), "needs num_classes >= 1"),
    (lambda: sv.build_metric_loss("triplet", 3, 4, miner="none"), "needs a triplet miner"),
    (lambda: sv.build_metric_loss("cosface", 3, 4, miner="hard"), "takes no miner"),
    (lambda: sv.build_metric_loss("triplet", 3, 4)(torch.randn(5, 3), torch.zeros(5)), r"expects embeddings \[B, 4\]"),
])
def test_supervised_losses_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------ DRML relational loss
@settings(FUZZ, max_examples=12)
@given(b=st.integers(1, 10), k=st.integers(1, 3), node_dim=st.integers(2, 4), n=st.integers(1, 5),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000), classes=st.integers(1, 3),
       base=st.sampled_from(["triplet", "margin", "proxy_anchor", "cosface"]),
       recon_error=st.sampled_from(["mse_per_dim", "l2_mean"]))
def test_drml_loss_is_finite_with_finite_gradients(b, k, node_dim, n, kind, seed, classes, base, recon_error):
    from dmlkit.losses.relational import DRMLLoss, assign_branches, reconstruction_errors
    from dmlkit.models.relational import RelationalOutput

    torch.manual_seed(seed)
    nodes = torch.nn.functional.normalize(points(b * k, node_dim, kind, seed), dim=1).view(b, k, node_dim)
    nodes.requires_grad_(True)
    recon = points(b * k, n, kind, seed + 1).view(b, k, n).requires_grad_(True)
    targets = points(b * k, n, kind, seed + 2).view(b, k, n)
    out = RelationalOutput(nodes=nodes, embedding=nodes.reshape(b, k * node_dim), recon=recon, targets=targets,
                           edges=torch.zeros(b, k, k), messages=torch.zeros(b, k, node_dim))
    labels = torch.randint(0, classes, (b,), generator=torch.Generator().manual_seed(seed))
    loss_fn = DRMLLoss(base, classes, k, node_dim, recon_error=recon_error)
    result = loss_fn(out, labels)
    for name, value in result.items():
        assert finite(value) and float(value) >= 0.0, (name, value)
    grads = grad_of(result["loss"], nodes, recon, *loss_fn.parameters())
    assert all(finite(gr) for gr in grads)
    errors = reconstruction_errors(recon, targets, recon_error)
    assert errors.shape == (b, k) and float(errors.min()) >= 0.0
    branch = assign_branches(errors)
    assert int(loss_fn.last_branch_sizes.sum()) == b and bool((branch < k).all())


def test_drml_loss_rejects_bad_input():
    from dmlkit.losses.relational import DRMLLoss, reconstruction_errors

    with pytest.raises(ValueError, match=r"recon and target must both be \[B, K, n\]"):
        reconstruction_errors(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="recon_error must be one of"):
        DRMLLoss("triplet", 3, 2, 4, recon_error="l1")
