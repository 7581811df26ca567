"""Orthogonal projection on the Stiefel manifold, AdamP, and the optimizer/scheduler factories."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmlkit.models import AdamP, OrthogonalProjection, build_optimizer, build_scheduler, tangent_projection
from dmlkit.models.orthogonal import polar_retraction, qr_retraction

# --- orthogonal projection ----------------------------------------------------------------------


def test_projection_init_and_forward() -> None:
    proj = OrthogonalProjection(128, 64)
    assert proj.orthogonality_error() < 1e-5
    z = torch.randn(5, 128)
    torch.testing.assert_close(proj(z), z @ proj.weight)  # row i = L^T z_i
    # distances under LL^T equal distances of the projections
    d = z[0] - z[1]
    torch.testing.assert_close((proj(z[:1]) - proj(z[1:2])).pow(2).sum(), d @ proj.weight @ proj.weight.T @ d)
    with pytest.raises(ValueError, match="out_dim <= in_dim"):
        OrthogonalProjection(4, 8)


@pytest.mark.parametrize("method", ["qr", "polar"])
def test_orthogonality_after_many_sgd_steps_and_retraction(method: str) -> None:
    proj = OrthogonalProjection(64, 32)
    optimizer = torch.optim.SGD(proj.parameters(), lr=0.5, momentum=0.9)
    for _ in range(50):
        z = torch.randn(16, 64)
        loss = proj(z).pow(3).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert proj.orthogonality_error() > 1e-3  # the plain step leaves the manifold ...
        proj.retract(method)
        assert proj.orthogonality_error() < 1e-5  # ... and the retraction brings it back
    with pytest.raises(ValueError, match="retraction"):
        proj.retract("cayley")


def test_retractions_fix_points_on_the_manifold() -> None:
    proj = OrthogonalProjection(10, 4)
    L = proj.weight.detach()
    torch.testing.assert_close(qr_retraction(L), L, atol=1e-6, rtol=0)
    torch.testing.assert_close(polar_retraction(L), L, atol=1e-6, rtol=0)


def test_tangent_projection() -> None:
    L = qr_retraction(torch.randn(9, 3, dtype=torch.float64))
    G = torch.randn(9, 3, dtype=torch.float64)
    xi = tangent_projection(L, G)
    sym = L.T @ xi + xi.T @ L
    torch.testing.assert_close(sym, torch.zeros(3, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(tangent_projection(L, xi), xi)  # a projection


def test_riemannian_descent_finds_the_top_eigenspace() -> None:
    """Maximise tr(LᵀAL) on St(6, 2): the optimum is the sum of A's two largest eigenvalues."""
    gen = torch.Generator().manual_seed(1)
    B = torch.randn(6, 6, generator=gen)
    A = B @ B.T
    proj = OrthogonalProjection(6, 2, generator=gen)
    optimizer = torch.optim.SGD(proj.parameters(), lr=0.02)
    for _ in range(400):
        loss = -torch.trace(proj.weight.T @ A @ proj.weight)
        optimizer.zero_grad()
        loss.backward()
        proj.project_gradient()
        optimizer.step()
        proj.retract()
    top2 = np.sort(np.linalg.eigvalsh(A.numpy().astype(np.float64)))[-2:].sum()
    assert abs(-loss.item() - top2) < 1e-3 * top2
    assert proj.orthogonality_error() < 1e-5


# --- AdamP --------------------------------------------------------------------------------------


def _run(optimizer_cls, params, loss_fn, steps, **kwargs):
    params = [p.detach().clone().requires_grad_(True) for p in params]
    optimizer = optimizer_cls(params, **kwargs)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(*params).backward()
        optimizer.step()
    return params


def test_adamp_equals_adamw_where_the_projection_does_not_trigger() -> None:
    W0, b0 = torch.randn(4, 5), torch.randn(5)
    target = -2.0 * W0  # the gradient 2(W - target) = 6 W is parallel to W: not scale-invariant

    def loss_fn(W, b):
        return (W - target).pow(2).sum() + (b - 1.0).pow(2).sum()

    adamp = _run(AdamP, [W0, b0], loss_fn, 20, lr=0.01, weight_decay=0.05)
    adamw = _run(torch.optim.AdamW, [W0, b0], loss_fn, 20, lr=0.01, weight_decay=0.05)
    for p, q in zip(adamp, adamw):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


def test_adamp_reduces_a_simple_loss() -> None:
    W0 = torch.randn(8, 3)
    x, y = torch.randn(32, 8), torch.randn(32, 3)

    def loss_fn(W):
        return (x @ W - y).pow(2).mean()

    (W,) = _run(AdamP, [W0], loss_fn, 200, lr=0.05, nesterov=True)
    best = torch.linalg.lstsq(x, y).solution
    assert loss_fn(W).item() < 0.5 * loss_fn(W0).item()
    assert loss_fn(W).item() < loss_fn(best).item() + 1e-2


def test_adamp_removes_the_radial_component_of_scale_invariant_weights() -> None:
    W0, x = torch.randn(4, 6), torch.randn(10, 6)

    def loss_fn(W):  # invariant to the scale of each row of W: the gradient is orthogonal to every row
        return (x @ F.normalize(W, dim=1).T).sin().sum()

    (adamp,) = _run(AdamP, [W0], loss_fn, 1, lr=0.1)
    (adamw,) = _run(torch.optim.AdamW, [W0], loss_fn, 1, lr=0.1, weight_decay=0.0)
    radial_p = ((adamp - W0) * F.normalize(W0, dim=1)).sum(dim=1).abs()
    radial_w = ((adamw - W0) * F.normalize(W0, dim=1)).sum(dim=1).abs()
    assert radial_p.max() < 1e-6
    assert radial_w.max() > 1e-2  # Adam's own update does change the norm


def test_adamp_weight_decay_ratio_and_nesterov_by_hand() -> None:
    lr, wd = 0.1, 0.5
    W = torch.ones(3, 4, requires_grad=True)
    b = torch.ones(4, requires_grad=True)
    optimizer = AdamP([W, b], lr=lr, weight_decay=wd, wd_ratio=0.1)
    W.grad, b.grad = torch.zeros_like(W), torch.zeros_like(b)  # zero gradient: cos = 0, projection on
    optimizer.step()
    torch.testing.assert_close(W.detach(), torch.full((3, 4), 1 - lr * wd * 0.1))  # decay scaled by wd_ratio
    torch.testing.assert_close(b.detach(), torch.full((4,), 1 - lr * wd))  # 1-D: plain AdamW decay
    # first Nesterov step: m = (1-β1) g, v = (1-β2) g², update = lr (1 + β1) sign(g) (up to ε)
    p = torch.zeros(2, requires_grad=True)
    nesterov = AdamP([p], lr=lr, nesterov=True)
    p.grad = torch.tensor([2.0, -3.0])
    nesterov.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-lr * 1.9, lr * 1.9]))


# --- factories ----------------------------------------------------------------------------------


def test_build_optimizer() -> None:
    params = [torch.nn.Parameter(torch.randn(3))]
    assert isinstance(build_optimizer("adam", params, 1e-3), torch.optim.Adam)
    assert isinstance(build_optimizer("adamw", params, 1e-3, 1e-4), torch.optim.AdamW)
    sgd = build_optimizer("sgd", params, 1e-2, 5e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    adamp = build_optimizer("adamp", [{"params": params, "lr": 1e-2}], 1e-4, 1e-2)
    assert isinstance(adamp, AdamP) and adamp.param_groups[0]["nesterov"] is True
    assert adamp.param_groups[0]["lr"] == 1e-2 and adamp.param_groups[0]["weight_decay"] == 1e-2
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("lamb", params, 1e-3)
    with pytest.raises(ValueError, match="no parameters"):
        build_optimizer("adam", [], 1e-3)


def test_build_scheduler() -> None:
    def lrs(name, epochs, **kwargs):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_scheduler(name, optimizer, epochs, **kwargs)
        out = []
        for _ in range(epochs):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    np.testing.assert_allclose(lrs("cosine", 4), [1.0, 0.5 * (1 + np.cos(np.pi / 4)), 0.5, 0.5 * (1 + np.cos(3 * np.pi / 4))])
    assert lrs("constant", 3) == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(lrs("step", 5, step_size=2, gamma=0.5), [1.0, 1.0, 0.5, 0.5, 0.25])
    with pytest.raises(ValueError, match="unknown scheduler"):
        lrs("poly", 3)
