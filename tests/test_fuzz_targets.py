"""Property fuzzing of the pseudo-supervision targets (``dmlkit.targets``) with hypothesis.

Inputs are drawn to hit the degenerate cases a training run meets: tiny and odd batch sizes,
duplicated image indices, identical points, zero vectors, huge and tiny scales, k at and beyond
the batch size. Every output must be finite and inside its documented range, or the call must
raise a ValueError whose message names the offending argument.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dmlkit.targets.contextual import contextual_similarity_parts
from dmlkit.targets.manifold import (
    basis_angle_cosine,
    batch_pieces,
    directed_similarity,
    manifold_estimate,
    manifold_supervision,
    piece_distances,
    point_similarity,
    proxy_similarity,
)
from dmlkit.targets.propagation import knn_graph, mine_triplets, propagate
from tests.fuzz_helpers import FUZZ, KINDS, finite, points

EPS = 1e-5



# ------------------------------------------------------------------ STML contextual similarity
@FUZZ
@given(n=st.integers(1, 14), d=st.integers(1, 6), kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       k_offset=st.integers(-13, 3), sigma=st.sampled_from([0.5, 3.0, 10.0]), normalize=st.booleans(),
       views=st.sampled_from([1, 2]), tie_break=st.sampled_from(["stable_index", "torch_topk"]))
def test_contextual_similarity_is_finite_and_in_range(n, d, kind, seed, k_offset, sigma, normalize, views, tie_break):
    x = points(n, d, kind, seed)
    g = torch.Generator().manual_seed(seed + 1)
    indices = torch.arange(n) // views if seed % 3 else torch.randint(0, max(1, n // 2), (n,), generator=g)
    k = n + k_offset if k_offset > 0 else max(1, n + k_offset)
    if k > n:
        with pytest.raises(ValueError, match=r"k = \d+ must lie in \[1, n\]"):
            contextual_similarity_parts(x, indices, k, sigma=sigma, normalize=normalize, tie_break=tie_break)
        return
    if k == 1:  # the default qe_size round_half_even(1/2) = 0 is refused, naming qe_size
        with pytest.raises(ValueError, match=r"qe_size = 0 must lie in \[1, n\]"):
            contextual_similarity_parts(x, indices, k, sigma=sigma, normalize=normalize, tie_break=tie_break)
        return
    if kind == "huge" and not normalize:
        x = x * 1e-4  # un-normalised teachers are unit-scale in practice; exp(-d²/σ) underflows to 0 otherwise
    parts = contextual_similarity_parts(x, indices, k, sigma=sigma, normalize=normalize, tie_break=tie_break)
    W = parts.W
    assert W.shape == (n, n) and finite(W) and finite(parts.contextual)
    assert torch.allclose(W, W.T, atol=1e-6)
    assert float(W.max()) <= 1.0 + EPS and float(W.min()) >= 0.0
    if normalize:  # documented range for normalised teachers: [exp(-4/σ)/2, 1]
        assert float(W.min()) >= math.exp(-4.0 / sigma) / 2 - EPS
    assert float(parts.contextual.min()) >= 0.0 and float(parts.contextual.max()) <= 1.0 + EPS
    assert bool((parts.reciprocal.diagonal() == 1).all()) and bool((parts.expansion.diagonal() == 1).all())
    assert int(parts.expansion.sum(1).min()) == parts.qe_size


@pytest.mark.parametrize("bad, message", [
    ({"k": 0}, r"k = 0 must lie in \[1, n\]"),
    ({"sigma": 0.0}, "sigma must be positive"),
    ({"qe_size": 9}, r"qe_size = 9 must lie in \[1, n\]"),
    ({"tie_break": "random"}, "tie_break must be one of"),
])
def test_contextual_similarity_rejects_bad_options(bad, message):
    x, idx = points(6, 3, "random", 0), torch.arange(6)
    kw = {"k": 2} | bad
    with pytest.raises(ValueError, match=message):
        contextual_similarity_parts(x, idx, **kw)
    with pytest.raises(ValueError, match="indices must be"):
        contextual_similarity_parts(x, torch.arange(5), 2)


# ------------------------------------------------------------------ PLM manifold pieces and similarity
@FUZZ
@given(b=st.integers(2, 12), d=st.integers(1, 6), kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       m=st.integers(1, 7), k=st.integers(1, 15), threshold=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
       selection=st.booleans(), error_def=st.sampled_from(["absolute", "point_norm", "literal", "energy"]),
       center=st.sampled_from(["mean", "anchor", "none"]), unit=st.booleans())
def test_manifold_pieces_are_orthonormal_or_zero_and_similarity_in_unit_interval(
        b, d, kind, seed, m, k, threshold, selection, error_def, center, unit):
    x = points(b, d, kind, seed)
    if unit:
        x = torch.nn.functional.normalize(x, dim=1)
    pieces = batch_pieces(x, m=m, k=k, threshold=threshold, selection=selection, error_def=error_def, center=center)
    kk = min(k, b - 1)
    assert pieces.bases.shape == (b, d, m) and pieces.neighbours.shape == (b, kk) and pieces.selected.shape == (b, kk)
    assert finite(pieces.bases) and finite(pieces.radius) and float(pieces.radius.min()) >= 0.0
    assert not bool((pieces.neighbours == torch.arange(b)[:, None]).any()), "a point is its own neighbour"
    gram = pieces.bases.transpose(1, 2).double() @ pieces.bases.double()  # [b, m, m]
    diag = gram.diagonal(dim1=1, dim2=2)
    assert bool(((diag - 1).abs() < 1e-3).logical_or(diag.abs() < 1e-3).all()), diag
    off = gram - torch.diag_embed(diag)
    assert float(off.abs().max()) < 1e-3
    s = point_similarity(pieces)
    assert s.shape == (b, b) and finite(s) and torch.allclose(s, s.T)
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0 + EPS
    binary = point_similarity(pieces, binary=True)
    assert set(binary.unique().tolist()) <= {0.0, 0.5, 1.0}


@FUZZ
@given(a=st.integers(1, 8), p=st.integers(1, 8), d=st.integers(1, 6), m=st.integers(1, 4),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000))
def test_piece_distances_and_directed_similarity(a, p, d, m, kind, seed):
    x = points(a, d, kind, seed)
    centres = points(p, d, kind, seed + 1)
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(p, d, max(m, d), generator=g)
    bases = torch.linalg.qr(raw).Q[:, :, :m] if m <= d else torch.zeros(p, d, m)
    o, q = piece_distances(x, centres, bases)
    assert o.shape == q.shape == (a, p) and finite(o) and finite(q)
    assert float(o.min()) >= 0.0 and float(q.min()) >= 0.0
    delta = torch.cdist(x.double(), centres.double())
    assert torch.allclose((o.double().square() + q.double().square()).sqrt(), delta, rtol=1e-3,
                          atol=1e-3 * max(1.0, float(delta.max())))
    s = directed_similarity(o, q)
    assert finite(s) and float(s.min()) >= 0.0 and float(s.max()) <= 1.0


@FUZZ
@given(b=st.integers(2, 10), n_proxies=st.integers(1, 5), d=st.integers(2, 6), m=st.integers(1, 3),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000), binary=st.booleans())
def test_proxy_similarity_and_basis_cosines(b, n_proxies, d, m, kind, seed, binary):
    from dmlkit.losses.manifold import ManifoldProxies

    m = min(m, d)
    x = torch.nn.functional.normalize(points(b, d, kind, seed), dim=1)
    pieces = batch_pieces(x, m=m, k=4)
    proxies = ManifoldProxies(n_proxies, d, m, generator=torch.Generator().manual_seed(seed))
    s = proxy_similarity(pieces, proxies.locations(), proxies.bases(), binary=binary)
    assert s.shape == (b, n_proxies) and finite(s)
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0 + EPS
    cos = basis_angle_cosine(pieces.bases, proxies.bases())
    assert cos.shape == (b, n_proxies, m) and finite(cos)
    assert float(cos.min()) >= 0.0 and float(cos.max()) <= 1.0 + 1e-4
    # a proxy set on every batch point with that point's piece basis is that point's piece: Eq. 5 between
    # points and proxies is then Eq. 5 between points
    assert torch.allclose(proxy_similarity(pieces, x, pieces.bases), point_similarity(pieces), atol=1e-5)
    # every column of an orthonormal basis lies in its own span: cos θ = 1 (Eq. 8)
    own = basis_angle_cosine(proxies.bases(), proxies.bases())[torch.arange(n_proxies), torch.arange(n_proxies)]
    assert torch.allclose(own, torch.ones(n_proxies, m), atol=1e-5)


@FUZZ
@given(n=st.integers(2, 14), d=st.integers(1, 5), kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       k=st.integers(1, 16), m=st.integers(1, 4))
def test_manifold_estimate_and_supervision(n, d, kind, seed, k, m):
    x = points(n, d, kind, seed)
    est = manifold_estimate(x, k=k, m=m)
    kk = min(k, n - 1)
    groups, sim = est["groups"], est["similarity"]
    assert groups.shape == (n, kk + 1) and bool((groups[:, 0] == torch.arange(n)).all())
    assert int(groups.min()) >= -1 and int(groups.max()) < n
    assert finite(sim) and float(sim.min()) >= 0.0 and float(sim.max()) <= 1.0 + EPS
    sup = manifold_supervision(x, k=k, m=m, chunk=5)
    rows = sup.similarity_rows(torch.arange(n))
    assert rows.shape == (n, n) and finite(rows) and float(rows.min()) >= 0 and float(rows.max()) <= 1.0 + EPS
    assert torch.allclose(rows, sim, atol=1e-4)  # the whole-set similarity equals the batch one on the same set
    assert 1.0 <= sup.mean_group_size <= kk + 1


@pytest.mark.parametrize("call, message", [
    (lambda: batch_pieces(torch.randn(1, 3)), "B >= 2"),
    (lambda: batch_pieces(torch.randn(4, 3), m=0), "piece dimension m must be >= 1"),
    (lambda: batch_pieces(torch.randn(4, 3), threshold=90), "threshold T is a fraction"),
    (lambda: batch_pieces(torch.randn(4, 3), error_def="rms"), "error_def='rms' is not one of"),
])
def test_manifold_rejects_bad_options(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------ SSDML propagation and triplet mining
@FUZZ
@given(n=st.integers(2, 16), d=st.integers(1, 5), kind=st.sampled_from(KINDS), seed=st.integers(0, 10_000),
       k_offset=st.integers(-15, 2), gamma=st.sampled_from([0.01, 0.5, 0.99]),
       symmetrize=st.sampled_from(["transpose", "literal", "none"]),
       solver=st.sampled_from(["dense", "sparse_krylov", "sparse_neumann"]), labeled=st.floats(0.0, 1.0))
def test_propagation_affinities_are_finite_and_in_minus_one_one(n, d, kind, seed, k_offset, gamma, symmetrize,
                                                                solver, labeled):
    z = points(n, d, kind, seed, dtype=torch.float64)
    k = n - 1 + k_offset if k_offset > 0 else max(1, n - 1 + k_offset)
    if k > n - 1:
        with pytest.raises(ValueError, match=f"k={k} neighbours need at least {k + 1} nodes"):
            knn_graph(z, k)
        return
    graph = knn_graph(z, k, block_size=5)
    nbr = graph.neighbours
    assert nbr.shape == (n, k) and not bool((nbr == torch.arange(n)[:, None]).any())
    assert all(len(set(row)) == k for row in nbr.tolist()), "a neighbour listed twice"
    assert torch.allclose(torch.as_tensor(graph.Q.sum(1)).squeeze(), torch.ones(n, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    labels = torch.where(torch.rand(n, generator=g) < labeled, torch.randint(0, 3, (n,), generator=g), -1)
    prop = propagate(graph, labels, gamma=gamma, symmetrize=symmetrize, solver=solver, tol=1e-6, block_size=8)
    for t in (prop.affinity, prop.forward, prop.backward, prop.diagonal):
        assert finite(t) and float(t.abs().max()) <= 1.0 + 1e-6
    if k % 2 == 0:
        triplets = mine_triplets(nbr, prop.affinity)
        assert triplets.shape == (n * k // 2, 3)
        a, p, q = triplets.T
        assert bool((a != p).all() and (a != q).all() and (p != q).all())
        member = (nbr[a] == p[:, None]).any(1) & (nbr[a] == q[:, None]).any(1)
        assert bool(member.all()), "a mined positive or negative is not in the anchor's neighbourhood"
    else:
        with pytest.raises(ValueError, match="k must be even"):
            mine_triplets(nbr, prop.affinity)


@pytest.mark.parametrize("call, message", [
    (lambda g: propagate(g, torch.zeros(5), gamma=1.0), r"gamma must lie in \(0, 1\)"),
    (lambda g: propagate(g, torch.zeros(5), gamma=0.0), r"gamma must lie in \(0, 1\)"),
    (lambda g: propagate(g, torch.zeros(4)), r"labels must have shape \[5\]"),
    (lambda g: propagate(g, torch.zeros(5), solver="cg"), "solver must be one of"),
    (lambda g: propagate(g, torch.zeros(5), symmetrize="max"), "symmetrize must be one of"),
    (lambda g: mine_triplets(g.neighbours, torch.zeros(5, 2), tie_tol=0.0), "tie_tol must be positive"),
])
def test_propagation_rejects_bad_options(call, message):
    graph = knn_graph(torch.randn(5, 2, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match=message):
        call(graph)
