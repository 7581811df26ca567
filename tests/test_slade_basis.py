"""SLADE's feature basis, similarity Gaussians and pair selection (spec SLADE.md §6-§7, tests §11.3-8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmlkit.losses.basis import (
    FeatureBasis,
    SimilarityGaussians,
    all_pairs,
    pair_statistics_inputs,
    select_pairs,
)

S_POS = torch.tensor([0.9, 0.7])
S_NEG = torch.tensor([0.1, 0.3, 0.2])


@pytest.mark.parametrize("margin, expected", [(0.5, 0.016667), (0.7, 0.116667)])
def test_sd_loss_by_hand_batch_statistics(margin, expected):
    """§11.3: μ_b⁺ = 0.8, σ_b⁺² = 0.01, μ_b⁻ = 0.2, σ_b⁻² = 0.006667."""
    gauss = SimilarityGaussians(beta=0.99, lambda_sd=1.0, margin=margin, gradient="batch")
    loss = gauss(S_POS, S_NEG)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert gauss.mu_pos.item() == pytest.approx(0.8) and gauss.var_pos.item() == pytest.approx(0.01)
    assert gauss.mu_neg.item() == pytest.approx(0.2) and gauss.var_neg.item() == pytest.approx(0.02 / 3)


def _seeded(gradient: str, mu_pos: float = 0.6, var_pos: float = 0.02) -> SimilarityGaussians:
    gauss = SimilarityGaussians(beta=0.99, gradient=gradient)
    gauss.mu_pos.fill_(mu_pos)
    gauss.var_pos.fill_(var_pos)
    gauss.seeded_pos.fill_(True)
    gauss.mu_neg.fill_(-1.0)  # far below μ⁺: the hinge is inactive
    gauss.seeded_neg.fill_(True)
    return gauss


def test_momentum_rule():
    """§11.4: μ⁺ 0.6 -> 0.99 * 0.6 + 0.01 * 0.8 = 0.602; σ⁺² 0.02 -> 0.99 * 0.02 + 0.01 * 0.01."""
    gauss = _seeded("momentum")
    gauss(S_POS, torch.zeros(0))
    assert gauss.mu_pos.item() == pytest.approx(0.602)
    assert gauss.var_pos.item() == pytest.approx(0.0199)
    assert gauss.mu_neg.item() == -1.0  # no negative pair in the batch: μ⁻ untouched


def test_gradient_through_momentum_is_damped_by_one_minus_beta():
    """§11.4: ∂L_SD/∂σ_b⁺² is 0.01 with sd_gradient="momentum" and 1 with "batch"; through
    ∂σ_b²/∂s_0 = 2 (s_0 − μ_b) / 2 = 0.1 that is 0.001 against 0.1."""
    grads = {}
    for mode in ("momentum", "batch"):
        s = S_POS.clone().requires_grad_()
        _seeded(mode)(s, torch.zeros(0)).backward()
        grads[mode] = s.grad[0].item()
    assert grads["momentum"] == pytest.approx(0.001)
    assert grads["batch"] == pytest.approx(0.1)


def test_gaussians_seed_from_their_first_batch():
    gauss = SimilarityGaussians()
    gauss(S_POS, torch.zeros(0))
    assert bool(gauss.seeded_pos) and not bool(gauss.seeded_neg) and not gauss.active
    assert gauss.mu_pos.item() == pytest.approx(0.8)
    gauss(torch.zeros(0), S_NEG)
    assert gauss.active and gauss.mu_neg.item() == pytest.approx(0.2)
    assert gauss.mu_pos.item() == pytest.approx(0.8)  # unchanged by a batch without positives
    gauss.reset()
    assert not bool(gauss.seeded_pos) and gauss.mu_pos.item() == 0.0


def _hand_made():
    """Items 0,1 share cluster 0; items 2,3 share cluster 1."""
    pseudo = torch.tensor([0, 0, 1, 1])
    s = torch.full((4, 4), 0.4)
    s[0, 1] = s[1, 0] = 0.7  # same cluster, confident
    s[2, 3] = s[3, 2] = 0.5  # same cluster, below T1
    s[0, 2] = s[2, 0] = 0.1  # cross cluster, confident
    s[1, 3] = s[3, 1] = 0.7  # cross cluster, high similarity
    s.fill_diagonal_(1.0)
    return s, pseudo


def test_pair_selection_on_a_hand_made_matrix():
    """§11.5: T1 = 0.602, T2 = 0.2."""
    s, pseudo = _hand_made()
    pos, neg = select_pairs(s, pseudo, 0.602, 0.2)
    assert torch.nonzero(pos).tolist() == [[0, 1]]
    assert torch.nonzero(neg).tolist() == [[0, 2]]
    pos, neg = select_pairs(s, pseudo, 0.602, 0.2, require_label_agreement=False)
    assert torch.nonzero(pos).tolist() == [[0, 1], [1, 3]]  # the cross pair at 0.7 becomes positive
    assert torch.nonzero(neg).tolist() == [[0, 2]]


def test_positive_only_selection_keeps_every_cross_cluster_pair():
    """``select_negatives=False``: P_u as before, N_u = every pair of different clusters (the cross pair at
    0.7, a hard negative, stays in), also when the thresholds switch selection off."""
    s, pseudo = _hand_made()
    pos, neg = select_pairs(s, pseudo, 0.602, 0.2, select_negatives=False)
    assert torch.nonzero(pos).tolist() == [[0, 1]]
    assert torch.nonzero(neg).tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]
    pos, neg = select_pairs(s, pseudo, 0.2, 0.6, select_negatives=False)
    assert not pos.any() and torch.nonzero(neg).tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]
    pos, neg = select_pairs(s, pseudo, 0.602, 0.2, require_label_agreement=False, select_negatives=False)
    assert torch.nonzero(pos).tolist() == [[0, 1], [1, 3]]  # the cross pair at 0.7 is a positive, not both
    assert torch.nonzero(neg).tolist() == [[0, 2], [0, 3], [1, 2]]


def test_no_selection_unless_mu_pos_above_mu_neg():
    s, pseudo = _hand_made()
    for t1, t2 in ((0.2, 0.2), (0.1, 0.6)):
        pos, neg = select_pairs(s, pseudo, t1, t2)
        assert not pos.any() and not neg.any()


def test_selection_is_the_same_with_gradients_enabled():
    s, pseudo = _hand_made()
    leaf = s.clone().requires_grad_()
    pos, neg = select_pairs(leaf * 1.0, pseudo, 0.602, 0.2)
    ref_pos, ref_neg = select_pairs(s, pseudo, 0.602, 0.2)
    assert torch.equal(pos, ref_pos) and torch.equal(neg, ref_neg) and not pos.requires_grad


def test_thresholds_with_kappa():
    gauss = _seeded("momentum", mu_pos=0.6, var_pos=0.04)
    gauss.mu_neg.fill_(0.2)
    gauss.var_neg.fill_(0.01)
    assert gauss.thresholds() == pytest.approx((0.6, 0.2))
    assert gauss.thresholds(kappa=1.0) == pytest.approx((0.4, 0.3))


def test_statistics_inputs_and_all_pairs():
    s, pseudo = _hand_made()
    positives, negatives = pair_statistics_inputs(s, pseudo)
    assert sorted(positives.tolist()) == pytest.approx([0.5, 0.7])
    assert sorted(negatives.tolist()) == pytest.approx([0.1, 0.4, 0.4, 0.7])
    pos, neg = all_pairs(pseudo)
    assert pos.sum() == 2 and neg.sum() == 4 and not (pos & neg).any()


def test_ce_is_bias_free_cross_entropy():
    """§11.6."""
    torch.manual_seed(0)
    basis = FeatureBasis(5, 8)
    f, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 0])
    assert basis.ce_loss(f, y).item() == pytest.approx(F.cross_entropy(f @ basis.weight.T, y).item())
    assert basis.bias is None and FeatureBasis(5, 8, ce="bias").bias is not None


def test_ce_gradient_reaches_only_labeled_items():
    torch.manual_seed(1)
    basis = FeatureBasis(3, 4)
    f = torch.randn(6, 4, requires_grad=True)
    labeled = torch.tensor([True, False, True, False, True, False])
    basis.ce_loss(f[labeled], torch.tensor([0, 1, 2])).backward()
    assert (f.grad[~labeled] == 0).all()
    assert (f.grad[labeled].abs().sum(1) > 0).all()
    assert basis.weight.grad.abs().sum() > 0


def test_basis_similarity_invariances():
    """§11.7: unchanged when f is scaled by c > 0 or W_a by c != 0; symmetric."""
    torch.manual_seed(2)
    basis = FeatureBasis(4, 6)
    f = torch.randn(5, 6)
    s = basis.similarity(f)
    assert torch.allclose(s, s.T)
    assert torch.allclose(basis.similarity(3.0 * f), s, atol=1e-6)
    with torch.no_grad():
        basis.weight.mul_(-2.5)
    assert torch.allclose(basis.similarity(f), s, atol=1e-6)
    assert s.min() >= -1 - 1e-6 and s.max() <= 1 + 1e-6


def test_bad_options_raise():
    with pytest.raises(ValueError, match="basis_sim"):
        FeatureBasis(2, 2, similarity="dot")
    with pytest.raises(ValueError, match="sd_gradient"):
        SimilarityGaussians(gradient="none")
    with pytest.raises(ValueError, match="beta"):
        SimilarityGaussians(beta=1.0)
