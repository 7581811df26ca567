"""The five classical SSDML objectives, their M-steps and partition graphs (spec SSDML.md §8, §12.9)."""
import math

import numpy as np
import pytest
import torch

from dmlkit.losses import classical as C

D = torch.float64


def _line_batch():
    """Hand case in 2-D: x0=(0,0) and x1=(1,0) of class 0, x2=(0,2) of class 1, x3=(3,0) unlabeled."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], dtype=D)
    labels = torch.tensor([0, 0, 1, -1])
    edges = torch.tensor([[1, 3], [2, 3]])
    weights = torch.tensor([0.5, 1.0], dtype=D)
    return x, labels, edges, weights


def _unit(n=16, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=D), dim=1)


def _random_spd(d, seed=0, det_one=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=D)
    m = a @ a.T + 0.1 * torch.eye(d, dtype=D)
    return m / torch.det(m) ** (1 / d) if det_one else m


# ------------------------------------------------------------------ pairs
def test_batch_pairs_split_labeled_and_unlabeled():
    pairs = C.batch_pairs(torch.tensor([0, 1, 0, -1, -1]))
    assert pairs["similar"].tolist() == [[0, 2]]
    assert pairs["dissimilar"].tolist() == [[0, 1], [1, 2]]
    assert pairs["unlabeled"].tolist() == [[3, 4]]


# ------------------------------------------------------------------ LRML / ISDML
def test_lrml_by_hand():
    x, labels, edges, weights = _line_batch()
    out = C.lrml_loss(x, labels, edges, weights, gamma_s=1.0, gamma_d=2.0)
    # S: δ²(0,1)=1; D: δ²(0,2)=4, δ²(1,2)=5 -> 4.5; edges: 0.5·4 and 1·13 -> 7.5
    assert out["similar"].item() == pytest.approx(1.0)
    assert out["dissimilar"].item() == pytest.approx(4.5)
    assert out["laplacian"].item() == pytest.approx(7.5)
    assert out["loss"].item() == pytest.approx(1.0 - 9.0 + 7.5)


def test_lrml_with_metric_by_hand_and_linear_in_metric():
    x, labels, edges, weights = _line_batch()
    metric = torch.diag(torch.tensor([2.0, 1.0], dtype=D))
    # S: 2; D: 4 and 6 -> 5; edges: 0.5·8 and 1·22 -> 13
    out = C.lrml_loss(x, labels, edges, weights, metric=metric)
    assert out["loss"].item() == pytest.approx(2.0 - 5.0 + 13.0)
    scatter = C.lrml_scatter(x, labels, edges, weights)
    assert torch.trace(metric @ scatter).item() == pytest.approx(10.0)
    # embeddings after the metric give the same value
    after = C.lrml_loss(x @ C.matrix_sqrt(metric), labels, edges, weights)
    assert after["loss"].item() == pytest.approx(10.0)


def test_isdml_is_lrml_objective():
    x, labels, edges, weights = _line_batch()
    assert C.isdml_loss(x, labels, edges, weights)["loss"].item() == C.lrml_loss(x, labels, edges, weights)["loss"].item()


def _step(loss_fn, x, lr=0.05):
    x = x.clone().requires_grad_(True)
    loss_fn(x)["loss"].backward()
    return (x - lr * x.grad).detach()


def test_lrml_terms_move_distances_as_the_paper_says():
    x, labels, edges, _weights = _line_batch()
    none = torch.zeros(0, 2, dtype=torch.long)
    empty = torch.zeros(0, dtype=D)
    # similar term only (γ_D = 0, no edges): similar distance shrinks
    y = _step(lambda v: C.lrml_loss(v, labels, none, empty, 1.0, 0.0), x)
    assert C.pair_sq_dists(y, torch.tensor([[0, 1]])) < 1.0
    # dissimilar term only: dissimilar distances grow
    y = _step(lambda v: C.lrml_loss(v, labels, none, empty, 0.0, 1.0), x)
    assert (C.pair_sq_dists(y, torch.tensor([[0, 2], [1, 2]])) > torch.tensor([4.0, 5.0], dtype=D)).all()
    # Laplacian only (no labels): every edge shortens, the heavier edge relatively more
    unl = torch.full((4,), -1)
    y = _step(lambda v: C.lrml_loss(v, unl, edges, torch.tensor([0.1, 1.0], dtype=D), 0.0, 0.0), x, lr=0.01)
    before, after = C.pair_sq_dists(x, edges), C.pair_sq_dists(y, edges)
    assert (after < before).all()
    assert (after / before)[1] < (after / before)[0]


# ------------------------------------------------------------------ SERAPH
def test_seraph_probability_and_entropy_at_threshold():
    d2 = torch.tensor([0.0, 0.5, 1.0, 3.0], dtype=D)
    assert torch.allclose(C.seraph_probability(d2, 1.0) + C.seraph_probability(d2, -1.0), torch.ones(4, dtype=D))
    # two unlabeled points at δ² = η: H = ln 2, and no labeled pairs
    x = torch.tensor([[0.0], [1.0]], dtype=D)
    out = C.seraph_loss(x, torch.tensor([-1, -1]), eta=1.0, mu=1.0)
    assert out["entropy"].item() == pytest.approx(math.log(2))
    assert out["likelihood"].item() == 0.0


def test_seraph_by_hand():
    # points on a line: labeled 0:0, 1:1 (class 0), 2:2 (class 1); unlabeled 0 and 0.5
    x = torch.tensor([[0.0], [1.0], [2.0], [0.0], [0.5]], dtype=D)
    labels = torch.tensor([0, 0, 1, -1, -1])
    out = C.seraph_loss(x, labels, eta=1.0, mu=2.0)
    # −log p: (0,1) δ²=1 -> ln2; (0,2) δ²=4 -> ln(1+e^-3); (1,2) δ²=1 -> ln2; U: δ²=.25, p=σ(.75)
    assert out["likelihood"].item() == pytest.approx(0.4782939042312109, abs=1e-12)
    assert out["entropy"].item() == pytest.approx(0.6274869817333553, abs=1e-12)
    assert out["loss"].item() == pytest.approx(1.7332678676979214, abs=1e-12)
    metric = torch.eye(1, dtype=D) * 3
    with_trace = C.seraph_loss(x, labels, eta=3.0, mu=2.0, trace_weight=0.1, metric=metric)
    same = C.seraph_loss(x * math.sqrt(3), labels, eta=3.0, mu=2.0)
    assert with_trace["loss"].item() == pytest.approx(same["loss"].item() + 0.3)


def test_seraph_terms_move_distances_as_the_paper_says():
    x = torch.tensor([[0.0], [1.0], [1.2], [5.0], [5.5], [8.0], [9.6]], dtype=D)
    # likelihood: the similar pair (0,1) shrinks, the dissimilar pair (1,2) grows
    labels = torch.tensor([0, 0, 1, -1, -1, -1, -1])
    y = _step(lambda v: C.seraph_loss(v, labels, eta=1.0, mu=0.0), x)
    assert C.pair_sq_dists(y, torch.tensor([[0, 1]])) < 1.0
    assert C.pair_sq_dists(y, torch.tensor([[1, 2]])) > 0.04
    # entropy minimisation: an unlabeled pair closer than η gets closer, one farther gets farther
    unl = torch.tensor([-1, -1, -1, -1, -1, -1, -1])
    only = lambda v: C.seraph_loss(v[3:], unl[3:], eta=1.0, mu=1.0)
    y = _step(only, x, lr=0.2)
    assert C.pair_sq_dists(y, torch.tensor([[3, 4]])) < 0.25
    assert C.pair_sq_dists(y, torch.tensor([[5, 6]])) > 1.6 ** 2


# ------------------------------------------------------------------ APLLR / APIT θ-step
def test_affinity_laplacian_by_hand_and_signed_direction():
    x, _, _, _ = _line_batch()
    edges, weights = torch.tensor([[0, 1], [2, 3]]), torch.tensor([0.5, -1.0], dtype=D)
    assert C.affinity_laplacian_loss(x, edges, weights)["loss"].item() == pytest.approx((0.5 * 1 - 13) / 2)
    y = _step(lambda v: C.affinity_laplacian_loss(v, edges, weights), x, lr=0.01)
    after = C.pair_sq_dists(y, edges)
    assert after[0] < 1.0 and after[1] > 13.0  # positive affinity pulls, negative pushes


# ------------------------------------------------------------------ M-steps
def test_lrml_metric_step_by_hand_and_optimal():
    m = C.lrml_metric_step(torch.diag(torch.tensor([1.0, 4.0], dtype=D)))
    assert torch.allclose(m, torch.diag(torch.tensor([2.0, 0.5], dtype=D)))
    z = _unit(20, 5)
    scatter = C.weighted_scatter(z, torch.triu_indices(20, 20, 1).T, torch.rand(190, dtype=D))  # PSD
    m = C.lrml_metric_step(scatter)
    assert torch.logdet(m).item() == pytest.approx(0.0, abs=1e-9)
    best = torch.trace(m @ scatter)
    for seed in range(20):
        assert best <= torch.trace(_random_spd(5, seed, det_one=True) @ scatter) + 1e-9


def test_lrml_metric_step_handles_indefinite_scatter():
    m = C.lrml_metric_step(torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=D)), floor=1e-3)
    evals = torch.linalg.eigvalsh(m)
    assert torch.isfinite(m).all() and (evals > 0).all()
    assert torch.logdet(m).item() == pytest.approx(0.0, abs=1e-9)
    assert m[0, 0] == m.max()  # the direction where dissimilar spread wins is stretched most


def test_seraph_metric_step_is_psd_and_lowers_the_objective():
    z, labels = _unit(12, 4), torch.tensor([0, 0, 0, 1, 1, 1, -1, -1, -1, -1, -1, -1])
    start = torch.eye(4, dtype=D)
    m = C.seraph_metric_step(z, labels, start, trace_weight=1e-3, lr=0.1, steps=10)
    assert torch.linalg.eigvalsh(m).min() >= -1e-12
    before = C.seraph_loss(z, labels, trace_weight=1e-3, metric=start)["loss"]
    after = C.seraph_loss(z, labels, trace_weight=1e-3, metric=m)["loss"]
    assert after < before


def test_affinity_metric_step_by_hand():
    eye = torch.eye(2, dtype=D)
    m = C.affinity_metric_step(eye, torch.diag(torch.tensor([1.0, 0.0], dtype=D)), lam=1.0, ridge=0.0)
    assert torch.allclose(m, torch.diag(torch.tensor([0.5, 1.0], dtype=D)))
    # an indefinite bracket (I + λ C_W with a strongly negative C_W) is clipped at the floor before inverting
    m = C.affinity_metric_step(eye, torch.diag(torch.tensor([-2.0, 0.0], dtype=D)), lam=1.0, ridge=0.0, floor=1e-3)
    assert torch.allclose(m, torch.diag(torch.tensor([1000.0, 1.0], dtype=D)))


def test_affinity_scatter_normalisation_by_hand():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=D)
    edges, weights = torch.tensor([[0, 1], [0, 2]]), torch.tensor([1.0, -0.5], dtype=D)
    # Σ_{i<j} W ΔΔᵀ = diag(1, 0) − 0.5·diag(0, 4) = diag(1, −2); Σ|W| over i<j = 1.5 -> /3
    assert torch.allclose(C.affinity_scatter(z, edges, weights), torch.diag(torch.tensor([1 / 3, -2 / 3], dtype=D)))


def test_kissme_prior_matches_definition_and_is_psd():
    z, labels = _unit(12, 4, seed=3), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    prior = C.kissme_prior(z, labels, ridge=1e-3)
    zn, ln = z.numpy(), labels.numpy()
    sim, dis = np.zeros((4, 4)), np.zeros((4, 4))
    ns = nd = 0
    for i in range(12):
        for j in range(i + 1, 12):
            d = np.outer(zn[i] - zn[j], zn[i] - zn[j])
            if ln[i] == ln[j]:
                sim, ns = sim + d, ns + 1
            else:
                dis, nd = dis + d, nd + 1
    raw = np.linalg.inv(sim / ns + 1e-3 * np.eye(4)) - np.linalg.inv(dis / nd + 1e-3 * np.eye(4))
    w, v = np.linalg.eigh(raw)
    assert np.allclose(prior.numpy(), (v * np.clip(w, 0, None)) @ v.T)
    assert torch.linalg.eigvalsh(prior).min() >= -1e-9


def test_itml_prior_is_psd_and_meets_hard_constraints():
    # two classes spread along y, separated along x: the constraints are feasible
    z = torch.tensor([[0, -1], [0, 0], [0, 1.0], [1, -1], [1, 0], [1, 1], [0.1, 0.5], [1.1, -0.5]], dtype=D)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])
    pairs = C.batch_pairs(labels)
    start = C.pair_sq_dists(z, torch.cat([pairs["similar"], pairs["dissimilar"]]))
    upper, lower = np.percentile(start.numpy(), [5, 95])  # u = 0.26, l = 4.65
    hard = C.itml_prior(z, labels, slack=1e6, sweeps=300)  # large slack ≈ hard constraints
    assert torch.linalg.eigvalsh(hard).min() > 0
    assert C.pair_sq_dists(z, pairs["similar"], hard).max() <= upper * 1.001
    assert C.pair_sq_dists(z, pairs["dissimilar"], hard).min() >= lower * 0.999
    soft = C.itml_prior(z, labels)  # the spec's slack 1, 10 sweeps: part of the way, x stretched
    assert torch.linalg.eigvalsh(soft).min() > 0
    assert C.pair_sq_dists(z, pairs["similar"], soft).max() < C.pair_sq_dists(z, pairs["similar"]).max()
    assert C.pair_sq_dists(z, pairs["dissimilar"], soft).min() > C.pair_sq_dists(z, pairs["dissimilar"]).min()
    assert soft[0, 0] > 1 > soft[1, 1]


def test_priors_need_both_pair_kinds():
    with pytest.raises(ValueError, match="similar and one dissimilar"):
        C.kissme_prior(_unit(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="similar and one dissimilar"):
        C.itml_prior(_unit(3, 2), torch.tensor([0, 0, 0]))


# ------------------------------------------------------------------ graphs
def test_undirected_edges_mean_and_half_sum():
    nbrs = torch.tensor([[1, 2], [0, 2], [1, 3], [2, 1]])
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    edges, mean = C.undirected_edges(nbrs, w, "mean")
    assert edges.tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]
    assert mean.tolist() == [2.0, 2.0, 4.5, 8.0, 6.5]
    _, half = C.undirected_edges(nbrs, w, "half_sum")
    assert half.tolist() == [2.0, 1.0, 4.5, 4.0, 6.5]


def test_heat_kernel_and_density_weights_by_hand():
    assert torch.allclose(C.heat_kernel_weights(torch.tensor([[1.0, 3.0]])), torch.tensor([[math.exp(-0.5), math.exp(-1.5)]]))
    w = C.density_graph_weights(torch.tensor([[1.0, 4.0], [1.0, 1.0]], dtype=D), sigma=1.0)
    expected = torch.tensor([[0.46033880488095597, 0.1027154712556245], [0.7527225145443109, 0.7527225145443109]], dtype=D)
    assert torch.allclose(w, expected)


def test_isdml_bandwidth_by_hand():
    z = torch.tensor([[0.0], [1.0], [3.0]])
    # min D = 1 (nearest neighbour), max D = 3 -> σ = 1 + 2/10
    assert C.isdml_bandwidth(z, torch.tensor([1.0, 1.0, 4.0]), block_size=2) == pytest.approx(1.2)


# ------------------------------------------------------------------ robustness
@pytest.mark.parametrize("name", ["lrml", "isdml", "seraph", "affinity"])
def test_objectives_finite_and_carry_gradient_on_unit_norm_input(name):
    torch.manual_seed(1)
    z = torch.nn.functional.normalize(torch.randn(30, 8), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2] + [-1] * 24)
    edges = torch.triu_indices(30, 30, 1).T[torch.randperm(435)[:60]]
    weights = torch.randn(60)
    x = (z @ C.matrix_sqrt(_random_spd(8)).float()).requires_grad_(True)
    fn = {"lrml": lambda: C.lrml_loss(x, labels, edges, weights), "isdml": lambda: C.isdml_loss(x, labels, edges, weights),
          "seraph": lambda: C.seraph_loss(x, labels), "affinity": lambda: C.affinity_laplacian_loss(x, edges, weights)}[name]
    out = fn()
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_empty_pair_sets_give_zero_terms_still_attached():
    x = torch.randn(3, 2, requires_grad=True)
    out = C.lrml_loss(x, torch.full((3,), -1), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0))
    assert out["loss"].item() == 0.0
    out["loss"].backward()  # no error: still part of the graph


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="labels"):
        C.seraph_loss(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))


def test_degenerate_inputs_stay_finite():
    # >= 5% of the labeled pairs coincide: ITML's 5th-percentile target would be 0
    z = torch.tensor([[1.0], [-1.0], [-1.0], [1.0]], dtype=D)
    prior = C.itml_prior(z, torch.tensor([1, 0, 1, 1]), sweeps=2)
    assert torch.isfinite(prior).all() and torch.linalg.eigvalsh(prior).min() >= -1e-9
    assert torch.equal(C.itml_prior(torch.ones(4, 2, dtype=D), torch.tensor([0, 0, 1, 1])), torch.eye(2, dtype=D))
    # a collapsed network: every point identical, σ = 0
    sq = torch.zeros(4, 2, dtype=D)
    sigma = C.isdml_bandwidth(torch.ones(4, 3, dtype=D), sq[:, 0])
    assert sigma == 0.0
    assert torch.equal(C.density_graph_weights(sq, sigma), torch.ones(4, 2, dtype=D))
