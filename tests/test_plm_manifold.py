"""PLM targets: pieces (Sec. 3.2), distances and similarity (Eqs. 2-5), angles (Eq. 8). Spec PLM.md §10."""

import math

import numpy as np
import pytest
import torch

from dmlkit.targets.manifold import (
    Pieces,
    basis_angle_cosine,
    batch_pieces,
    directed_similarity,
    fit_pieces,
    piece_distances,
    point_similarity,
    proxy_similarity,
)


def _pieces(points, bases, k=1):
    b = points.shape[0]
    neighbours = torch.stack([torch.tensor([j for j in range(b) if j != i][:k]) for i in range(b)])
    return Pieces(points, bases, neighbours, torch.zeros(b, k, dtype=torch.bool), torch.zeros(b))


def _loop_select(x, m, k, threshold, error_def="absolute", check="all", center="mean"):
    """Per-anchor reference written from Sec. 3.2 with an SVD per trial set (numpy, float64)."""
    x = np.asarray(x, dtype=np.float64)
    out_sets, out_bases = [], []
    for i in range(len(x)):
        d = np.linalg.norm(x - x[i], axis=1)
        d[i] = np.inf
        order = np.argsort(d, kind="stable")[:k]
        chosen = [i] + list(order[: m - 1])

        def fit(idx, anchor=x[i]):
            pts = x[idx]
            mu = {"mean": pts.mean(0), "anchor": anchor, "none": np.zeros(x.shape[1])}[center]
            c = pts - mu
            _, sv, vt = np.linalg.svd(c, full_matrices=False)
            u = vt[:m].T[:, sv[:m] ** 2 > 1e-10]
            res = c - c @ u @ u.T
            return u, np.linalg.norm(res, axis=1), np.linalg.norm(c, axis=1)

        for t in range(m - 1, k):
            trial = chosen + [order[t]]
            _, err, cn = fit(trial)
            if error_def == "absolute":
                ok = err <= 1 - threshold
            elif error_def == "energy":
                ok = err**2 <= (1 - threshold) * cn**2
            elif error_def == "literal":
                ok = err < threshold
            else:
                ok = err / np.maximum(np.linalg.norm(x[trial], axis=1), 1e-12) <= 1 - threshold
            checked = ok if check == "all" else ok[:-1]
            if checked.all():
                chosen = trial
        u, _, _ = fit(chosen)
        out_sets.append({int(j) for j in chosen})
        out_bases.append(u @ u.T)
    return out_sets, out_bases


@pytest.mark.parametrize(
    "o,p,value",
    [
        (0, 0, 1.0),
        (0, 1, 0.707107),
        (1, 0, 0.197531),
        (2, 0, 0.0625),
        (0.8, 0.6, 0.205792),
        (0.6, 0.8, 0.260970),
    ],
)
def test_directed_similarity_values(o, p, value):
    assert directed_similarity(
        torch.tensor(float(o)), torch.tensor(float(p)), 4.0, 0.5
    ).item() == pytest.approx(value, abs=1e-6)


def test_orthogonal_distance_costs_more_than_in_piece_distance():
    eps = torch.tensor([1e-4, 1e-2, 0.1, 0.5, 1.0, 2.0])
    zero = torch.zeros_like(eps)
    assert (directed_similarity(eps, zero) < directed_similarity(zero, eps)).all()


def test_two_point_case_in_2d():
    points = torch.tensor([[0.0, 0.0], [0.6, 0.8]])
    bases = torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]])  # P_1 = span(e1), P_2 = span(e2)
    o, p = piece_distances(points, points, bases)
    assert (o[0, 1].item(), p[0, 1].item()) == pytest.approx((0.6, 0.8), abs=1e-6)  # x1 against P_2
    assert (o[1, 0].item(), p[1, 0].item()) == pytest.approx((0.8, 0.6), abs=1e-6)  # x2 against P_1
    s = point_similarity(_pieces(points, bases))
    assert s[0, 1].item() == pytest.approx(0.233381, abs=1e-6)
    assert torch.equal(s, s.T)


def test_distances_three_point_hand_example():
    # piece of x0 = (0,0,0) spanned by e1; x1 = (3,4,0): p = 3, o = 4; x2 = (1,2,2): p = 1, o = sqrt(8)
    points = torch.tensor([[0.0, 0, 0], [3.0, 4, 0], [1.0, 2, 2]])
    bases = torch.zeros(3, 3, 1)
    bases[0, 0, 0] = 1.0
    bases[1, 1, 0] = 1.0  # piece of x1 spanned by e2
    bases[2, 2, 0] = 1.0  # piece of x2 spanned by e3
    o, p = piece_distances(points, points, bases)
    torch.testing.assert_close(p[:, 0], torch.tensor([0.0, 3.0, 1.0]))
    torch.testing.assert_close(o[:, 0], torch.tensor([0.0, 4.0, math.sqrt(8.0)]))
    # x0 against P_1 = x1 + span(e2): Δ = (-3,-4,0): p = 4, o = 3; x2 against P_1: Δ = (-2,-2,2): p = 2, o = sqrt(8)
    torch.testing.assert_close(p[:, 1], torch.tensor([4.0, 0.0, 2.0]))
    torch.testing.assert_close(o[:, 1], torch.tensor([3.0, 0.0, math.sqrt(8.0)]))
    # x0 against P_2 = x2 + span(e3): Δ = (-1,-2,-2): p = 2, o = sqrt(5)
    assert (o[0, 2].item(), p[0, 2].item()) == pytest.approx((math.sqrt(5.0), 2.0), abs=1e-6)


def test_subset_selection_spec_example_skips_offline_point_and_keeps_later_one():
    x = torch.tensor([[0, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.05, 0.3, 0], [0.3, 0.01, 0], [0.4, 0, 0.02]])
    pieces = batch_pieces(x, m=1, k=5, threshold=0.9)
    members = set(torch.nonzero(pieces.members()[0]).flatten().tolist())
    assert members == {0, 1, 2, 4, 5}
    assert _loop_select(x.numpy(), 1, 5, 0.9)[0][0] == {0, 1, 2, 4, 5}
    # the basis of the anchor's piece is (almost) the x axis
    assert abs(pieces.bases[0, 0, 0].item()) > 0.99


@pytest.mark.parametrize(
    "error_def,check,center,threshold",
    [
        ("absolute", "all", "mean", 0.9),
        ("energy", "all", "mean", 0.9),
        ("literal", "previous", "anchor", 0.1),
        ("point_norm", "previous", "none", 0.8),
        ("absolute", "previous", "anchor", 0.85),
    ],
)
def test_vectorised_selection_matches_per_anchor_loop(error_def, check, center, threshold):
    gen = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(
        torch.randn(40, 6, generator=gen) + 2 * torch.eye(6)[torch.arange(40) % 3], dim=1
    )
    m, k = 2, 8
    pieces = batch_pieces(
        x.double(), m=m, k=k, threshold=threshold, error_def=error_def, check=check, center=center
    )
    sets, projectors = _loop_select(x.double().numpy(), m, k, threshold, error_def, check, center)
    members = pieces.members()
    assert any(len(s) < k + 1 for s in sets), "the example should reject something"
    assert any(len(s) > m for s in sets), "the example should accept something"
    for i in range(len(x)):
        assert set(torch.nonzero(members[i]).flatten().tolist()) == sets[i]
        u = pieces.bases[i]
        np.testing.assert_allclose((u @ u.T).numpy(), projectors[i], atol=1e-6)


def test_selection_keeps_points_on_plane_and_drops_outliers():
    gen = torch.Generator().manual_seed(0)
    plane = torch.linalg.qr(torch.randn(10, 2, generator=gen)).Q  # a 2-d plane in R^10
    centre = torch.randn(10, generator=gen) * 0.1
    grid = torch.cartesian_prod(torch.arange(4.0), torch.arange(4.0)) * 0.1 - 0.15
    on = centre + (grid + 0.01 * torch.rand(16, 2, generator=gen)) @ plane.T
    normal = torch.randn(3, 10, generator=gen)
    normal = normal - normal @ plane @ plane.T
    outliers = (
        centre
        + 0.4 * torch.nn.functional.normalize(normal, dim=1)
        + (torch.rand(3, 2, generator=gen) - 0.5) * 0.2 @ plane.T
    )
    x = torch.cat([on, outliers])
    pieces = batch_pieces(x, m=2, k=18, threshold=0.95)
    members = pieces.members()
    for i in range(16):
        assert members[i, :16].all(), f"on-plane anchor {i} must keep every on-plane point"
        assert not members[i, 16:].any(), f"on-plane anchor {i} must drop the outliers"
        u = pieces.bases[i]
        torch.testing.assert_close(u @ u.T, plane @ plane.T, atol=1e-5, rtol=0)
    # without selection the outliers are kept and the basis tilts away from the plane
    flat = batch_pieces(x, m=2, k=18, threshold=0.95, selection=False)
    assert flat.members().all()
    assert (flat.bases[0] @ flat.bases[0].T - plane @ plane.T).abs().max() > 1e-2


def test_selection_on_a_line_in_3d():
    t = torch.linspace(-0.5, 0.5, 9).unsqueeze(1)
    direction = torch.nn.functional.normalize(torch.tensor([[1.0, 2.0, -1.0]]), dim=1)
    line = t * direction
    outlier = torch.tensor([[0.0, 0.0, 0.4], [0.3, -0.3, 0.0]])
    x = torch.cat([line, outlier])
    pieces = batch_pieces(x, m=1, k=10, threshold=0.9)
    members = pieces.members()
    assert members[:9, :9].all() and not members[:9, 9:].any()
    torch.testing.assert_close(pieces.bases[4, :, 0].abs(), direction[0].abs(), atol=1e-5, rtol=0)


def test_degenerate_sets_give_zero_columns_and_a_projector():
    x = torch.tensor([[1.0, 0, 0, 0]] * 3 + [[0.0, 1, 0, 0]] * 3)
    bases, _ = fit_pieces(x[:1], x[1:].unsqueeze(0), m=3, threshold=0.9, selection=False)
    u = bases[0]
    nonzero = (u.norm(dim=0) > 1e-6).sum().item()
    assert nonzero == 1  # fewer than m = 3 directions
    proj = u @ u.T
    torch.testing.assert_close(proj @ proj, proj)
    assert torch.isfinite(u).all()


def test_angle_cosine():
    u = torch.eye(3)[:, :2].unsqueeze(0)  # P_i = span(e1, e2)
    psi = torch.stack(
        [torch.tensor([1.0, 0, 1]) / math.sqrt(2), torch.tensor([0.6, 0.8, 0]), torch.tensor([0.0, 0, 1])], 1
    )
    cos = basis_angle_cosine(u, psi.unsqueeze(0))
    torch.testing.assert_close(cos[0, 0], torch.tensor([1 / math.sqrt(2), 1.0, 0.0]), atol=1e-6, rtol=0)
    sq = basis_angle_cosine(u, psi.unsqueeze(0), squared=True)
    torch.testing.assert_close(sq[0, 0], torch.tensor([0.5, 1.0, 0.0]), atol=1e-6, rtol=0)


def test_similarity_symmetric_bounded_and_monotone():
    gen = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(30, 8, generator=gen), dim=1)
    pieces = batch_pieces(x, m=3, k=6)
    s = point_similarity(pieces)
    torch.testing.assert_close(s, s.T)
    assert (s > 0).all() and (s <= 1).all()
    torch.testing.assert_close(torch.diagonal(s), torch.ones(30))
    o = torch.linspace(0, 2, 11)
    assert (directed_similarity(o, torch.zeros(11)).diff() < 0).all()
    assert (directed_similarity(torch.zeros(11), o).diff() < 0).all()


def test_off_piece_points_less_similar_than_on_piece_points_at_same_distance():
    # anchor piece: x0 at origin with P_0 = span(e1); a at distance r along e1, b at distance r along e2
    r = 0.5
    points = torch.tensor([[0.0, 0.0], [r, 0.0], [0.0, r]])
    bases = torch.tensor([[[1.0], [0.0]], [[1.0], [0.0]], [[0.0], [1.0]]])
    s = point_similarity(_pieces(points, bases))
    assert s[0, 1] > s[0, 2]
    # with N_alpha = N_beta the two are equal in each direction's magnitude: no preference
    s_eq = point_similarity(_pieces(points, bases), n_alpha=1.0, n_beta=1.0)
    assert s_eq[0, 1] - s_eq[0, 2] < s[0, 1] - s[0, 2]


def test_same_image_option_forces_one():
    x = torch.nn.functional.normalize(torch.randn(8, 5), dim=1)
    pieces = batch_pieces(x, m=2, k=4)
    ids = torch.arange(4).repeat(2)
    s = point_similarity(pieces, same_image=ids)
    assert torch.all(s[torch.arange(4), torch.arange(4) + 4] == 1)
    assert s[0, 1] < 1


def test_binary_similarity_is_symmetrised_membership():
    x = torch.nn.functional.normalize(torch.randn(12, 5), dim=1)
    pieces = batch_pieces(x, m=2, k=4)
    members = pieces.members().float()
    s = point_similarity(pieces, binary=True)
    torch.testing.assert_close(s, 0.5 * (members + members.T))
    assert set(s.unique().tolist()) <= {0.0, 0.5, 1.0}


def test_proxy_similarity_is_eq5_with_proxy_pieces():
    gen = torch.Generator().manual_seed(4)
    x = torch.nn.functional.normalize(torch.randn(10, 6, generator=gen), dim=1)
    pieces = batch_pieces(x, m=2, k=4)
    rho = torch.nn.functional.normalize(torch.randn(3, 6, generator=gen), dim=1)
    psi = torch.linalg.qr(torch.randn(3, 6, 2, generator=gen)).Q
    s = proxy_similarity(pieces, rho, psi)
    i, j = 7, 2
    d = x[i] - rho[j]
    pp = (psi[j].T @ d).norm()
    oo = (d - psi[j] @ psi[j].T @ d).norm()
    pb = (pieces.bases[i].T @ -d).norm()
    ob = (-d - pieces.bases[i] @ pieces.bases[i].T @ -d).norm()
    ref = 0.5 * ((1 + oo / 2) ** -4 * (1 + pp) ** -0.5 + (1 + ob / 2) ** -4 * (1 + pb) ** -0.5)
    assert s[i, j].item() == pytest.approx(ref.item(), abs=1e-6)
    assert s.shape == (10, 3) and (s > 0).all() and (s <= 1).all()
    binary = proxy_similarity(pieces, rho, psi, binary=True)
    assert set(binary.unique().tolist()) <= {0.0, 0.5, 1.0}
    # a proxy sitting on a point, with that point's piece, is in its neighbourhood both ways
    on = proxy_similarity(pieces, x[:1], pieces.bases[:1], binary=True)
    assert on[0, 0] == 1.0


def test_bad_options_raise():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="error_def"):
        batch_pieces(x, error_def="relative")
    with pytest.raises(ValueError, match="threshold"):
        batch_pieces(x, threshold=90)
    with pytest.raises(ValueError, match="candidates"):
        fit_pieces(x, x, m=2)


def test_manifold_supervision_matches_batch_pieces_on_a_small_set():
    from dmlkit.targets.manifold import manifold_supervision

    gen = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(25, 6, generator=gen), dim=1)
    sup = manifold_supervision(x, k=6, m=2, chunk=7)
    pieces = batch_pieces(torch.nn.functional.normalize(x, dim=1), m=2, k=6)  # the same rounding as the hook
    members = pieces.members()
    for i in range(25):
        group = sup.groups[i][sup.groups[i] >= 0]
        assert group[0] == i and set(group.tolist()) == set(torch.nonzero(members[i]).flatten().tolist())
    assert sup.mean_group_size == pytest.approx(members.sum(1).double().mean().item())
    rows = torch.tensor([0, 3, 24])
    torch.testing.assert_close(sup.similarity_rows(rows), point_similarity(pieces)[rows], atol=1e-6, rtol=0)
