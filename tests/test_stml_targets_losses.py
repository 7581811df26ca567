"""STML spec §10 tests 1-6: contextualized similarity and the two losses, pinned to hand values."""
import math

import pytest
import torch

from dmlkit.losses.relaxed_contrastive import (
    normalised_distances,
    relaxed_contrastive_loss,
    self_distillation_kl,
)
from dmlkit.targets.contextual import contextual_similarity, contextual_similarity_parts, default_qe_size


def slow_contextual_similarity(t: torch.Tensor, idx: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Spec §4 steps 1-6, one pair at a time, with sets and python sorting (-value, self first, column)."""
    t = t.double()
    n = len(t)
    tb = [t[i] / t[i].norm() for i in range(n)]
    wp = [[math.exp(-float(((tb[i] - tb[j]) ** 2).sum()) / sigma) for j in range(n)] for i in range(n)]
    rank = [[1.0 if idx[i] == idx[j] else wp[i][j] for j in range(n)] for i in range(n)]
    order = [sorted(range(n), key=lambda j, i=i: (-rank[i][j], j != i, j)) for i in range(n)]
    topk = [set(order[i][:k]) for i in range(n)]
    R = [{j for j in topk[i] if i in topk[j]} for i in range(n)]
    wc_tilde = [[len(R[i] & R[j]) / len(R[i]) if j in R[i] else 0.0 for j in range(n)] for i in range(n)]
    qe = default_qe_size(k)
    N = [order[i][:qe] for i in range(n)]
    wc_hat = [[sum(wc_tilde[q][j] for q in N[i]) / qe for j in range(n)] for i in range(n)]
    W = [[0.5 * wp[i][j] + 0.25 * (wc_hat[i][j] + wc_hat[j][i]) for j in range(n)] for i in range(n)]
    return torch.tensor(W, dtype=torch.float64), R, N


def test_two_images_two_identical_views():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    t = torch.stack([e1, e2, e1, e2])
    W = contextual_similarity(t, torch.tensor([0, 1, 0, 1]), k=2, sigma=3.0)
    cross = 0.5 * math.exp(-2 / 3)
    assert cross == pytest.approx(0.256709, abs=1e-6)
    expected = torch.tensor([[1, cross, 1, cross], [cross, 1, cross, 1], [1, cross, 1, cross], [cross, 1, cross, 1]])
    torch.testing.assert_close(W, expected, atol=1e-6, rtol=0)


def test_four_points_on_the_circle():
    angles = torch.tensor([0.0, 30.0, 100.0, 180.0]) * math.pi / 180
    t = torch.stack([angles.cos(), angles.sin()], dim=1).double()
    parts = contextual_similarity_parts(t, torch.arange(4), k=2, sigma=3.0)
    wp = parts.pairwise
    for (i, j), value in {(0, 1): 0.914556, (0, 2): 0.457292, (1, 2): 0.644904, (2, 3): 0.576430, (0, 3): 0.263597}.items():
        assert wp[i, j].item() == pytest.approx(value, abs=1e-6)
    reciprocal = [set(torch.nonzero(row).flatten().tolist()) for row in parts.reciprocal]
    assert reciprocal == [{0, 1}, {0, 1}, {2}, {3}]
    W = parts.W
    for (i, j), value in {(0, 1): 0.957278, (0, 2): 0.228646, (0, 3): 0.131799, (1, 2): 0.322452,
                          (1, 3): 0.144112, (2, 3): 0.288215}.items():
        assert W[i, j].item() == pytest.approx(value, abs=1e-6)
        assert W[j, i].item() == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("seed,k,b", [(0, 4, 6), (1, 6, 8), (2, 10, 10), (3, 5, 7)])
def test_vectorised_equals_slow_loop_with_duplicates(seed, k, b):
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, b - 2, (b,), generator=gen)  # duplicated image indices inside the batch
    base = torch.randn(b, 5, generator=gen, dtype=torch.float64)
    t = torch.cat([base + 0.3 * torch.randn(b, 5, generator=gen, dtype=torch.float64),
                   base + 0.3 * torch.randn(b, 5, generator=gen, dtype=torch.float64)])
    idx2 = idx.repeat(2)
    parts = contextual_similarity_parts(t, idx2, k=k, sigma=3.0)
    slow, R, N = slow_contextual_similarity(t, idx2, k, 3.0)
    torch.testing.assert_close(parts.W, slow, atol=1e-6, rtol=0)
    W = parts.W
    assert torch.equal(W, W.T)
    assert W.min() >= 0.5 * math.exp(-4 / 3) - 1e-12 and W.max() <= 1 + 1e-12
    n = len(t)
    # R(i) always contains i; w^C_ij > 0 only through R(q), q ∈ N_{k/2}(i), or symmetrically
    assert all(i in R[i] for i in range(n))
    for i in range(n):
        for j in range(n):
            if parts.contextual[i, j] > 0:
                assert any(j in R[q] for q in N[i]) or any(i in R[q] for q in N[j])


def test_same_index_pairs_rank_first_and_duplicates_give_one():
    gen = torch.Generator().manual_seed(5)
    t = torch.randn(6, 4, generator=gen)
    t = torch.cat([t, t])
    W = contextual_similarity(t, torch.arange(6).repeat(2), k=2)
    torch.testing.assert_close(W.diagonal(6), torch.ones(6), atol=1e-6, rtol=0)


def test_no_gradient_and_bad_input():
    t = torch.randn(8, 3, requires_grad=True)
    W = contextual_similarity(t, torch.arange(8), k=4)
    assert not W.requires_grad
    with pytest.raises(ValueError, match="k ="):
        contextual_similarity(t, torch.arange(8), k=9)
    with pytest.raises(ValueError, match="indices"):
        contextual_similarity(t, torch.arange(7), k=2)
    with pytest.raises(ValueError, match="tie_break"):
        contextual_similarity(t, torch.arange(8), k=2, tie_break="random")


def _w3():
    return torch.tensor([[1.0, 0.8, 0.2], [0.8, 1.0, 0.5], [0.2, 0.5, 1.0]], dtype=torch.float64)


def test_relaxed_contrastive_by_hand_and_scale_invariance():
    e = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    d = normalised_distances(e)
    torch.testing.assert_close(d, torch.tensor([[0, .75, 2.25], [1, 0, 2], [1.8, 1.2, 0]], dtype=torch.float64))
    assert relaxed_contrastive_loss(e, _w3(), delta=1.0).item() == pytest.approx(0.9405, abs=1e-9)
    assert relaxed_contrastive_loss(7 * e, _w3(), delta=1.0).item() == pytest.approx(0.9405, abs=1e-9)
    assert relaxed_contrastive_loss(e, _w3(), normaliser="n").item() == pytest.approx(0.9405 * 2, abs=1e-9)
    with pytest.raises(ValueError, match="normaliser"):
        relaxed_contrastive_loss(e, _w3(), normaliser="mean")


def test_relaxed_contrastive_gradient_is_finite_with_coinciding_points():
    e = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    loss = relaxed_contrastive_loss(e, torch.full((3, 3), 0.5))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(e.grad).all()


def test_kl_by_hand_zero_for_scaled_copies_and_stop_gradient():
    f = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[0.0], [2.0], [3.0]], dtype=torch.float64, requires_grad=True)
    kl = self_distillation_kl(f, g)
    assert kl.item() == pytest.approx(0.072554, abs=1e-6)
    kl.backward()
    assert g.grad is None or torch.count_nonzero(g.grad) == 0
    assert torch.count_nonzero(f.grad) > 0
    x = torch.randn(6, 4, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    assert self_distillation_kl(2.5 * x @ rotation, x).item() == pytest.approx(0.0, abs=1e-12)
    assert self_distillation_kl(x[:, :2], x[:, 2:]).item() > 1e-4
