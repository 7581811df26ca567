"""k-means pseudo labels (spec SLADE.md §5, tests §11.1-2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmlkit.targets.clusters import class_prototypes, kmeans_plus_plus, kmeans_pseudo_labels, nearest_centroid


def _blobs(noise: float = 0.05, per_class: int = 100, dim: int = 3, seed: int = 0):
    """Spec §11.1: 3 prototypes e1, e2, e3 and 300 points = prototype + N(0, noise²), normalised."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.eye(dim)[:3]
    source = torch.arange(3).repeat_interleave(per_class)
    points = F.normalize(protos[source] + noise * torch.randn(3 * per_class, dim, generator=gen), dim=1)
    return protos, points, source


def test_prototype_seeding_keeps_class_identities():
    protos, points, source = _blobs()
    labels, centroids = kmeans_pseudo_labels(points, 3, init=protos, seed=0)
    assert torch.equal(labels, source)  # cluster c is the one seeded from prototype c
    assert centroids.shape == (3, 3)
    assert torch.allclose(F.normalize(centroids, dim=1), protos, atol=0.05)


def test_zero_iterations_is_nearest_prototype():
    protos, points, _ = _blobs(noise=0.6, seed=1)  # heavy overlap: Lloyd would move the centroids
    labels, centroids = kmeans_pseudo_labels(points, 3, init=protos, iters=0)
    brute = torch.cdist(points, protos).argmin(1)
    assert torch.equal(labels, brute)
    assert torch.equal(centroids, protos)


def test_fixed_seed_gives_identical_labels():
    _, points, _ = _blobs(noise=0.4, seed=2)
    a = kmeans_pseudo_labels(points, 7, seed=3)[0]
    b = kmeans_pseudo_labels(points, 7, seed=3)[0]
    assert torch.equal(a, b)


def test_more_clusters_than_prototypes():
    """Spec §11.2: K = 5, C = 3: the first 3 centroids start at the prototypes; no cluster ends empty."""
    protos, points, _ = _blobs(noise=0.2, seed=4)
    _, start = kmeans_pseudo_labels(points, 5, init=protos, iters=0, seed=0)
    assert torch.equal(start[:3], protos)
    assert not any(torch.equal(start[i], p) for i in (3, 4) for p in protos)
    labels, _ = kmeans_pseudo_labels(points, 5, init=protos, seed=0)
    assert (torch.bincount(labels, minlength=5) > 0).all()


def test_fewer_clusters_than_prototypes_picks_prototypes():
    protos, points, _ = _blobs()
    _, start = kmeans_pseudo_labels(points, 2, init=protos, iters=0, seed=0)
    assert all(any(torch.equal(row, p) for p in protos) for row in start)
    assert not torch.equal(start[0], start[1])


def test_kmeans_plus_plus_recovers_separated_clusters():
    from sklearn.metrics import adjusted_rand_score

    _, points, source = _blobs()
    labels, _ = kmeans_pseudo_labels(points, 3, init="k-means++", seed=0)
    assert adjusted_rand_score(source.numpy(), labels.numpy()) == 1.0


def test_lloyd_matches_scikit_learn():
    from sklearn.cluster import KMeans

    gen = torch.Generator().manual_seed(5)
    points = torch.randn(400, 4, generator=gen)
    init = points[:6].clone()
    ours, centroids = kmeans_pseudo_labels(points, 6, init=init, iters=100)
    ref = KMeans(6, init=init.double().numpy(), n_init=1, max_iter=100, tol=0.0, algorithm="lloyd").fit(
        points.double().numpy()
    )
    assert np.array_equal(ours.numpy(), ref.labels_)
    assert np.allclose(centroids.numpy(), ref.cluster_centers_, atol=1e-5)


def test_faiss_backend_agrees_with_torch():
    _, points, _ = _blobs(noise=0.3, seed=6)
    a, ca = kmeans_pseudo_labels(points, 4, seed=1, backend="torch")
    b, cb = kmeans_pseudo_labels(points, 4, seed=1, backend="faiss")
    assert torch.equal(a, b)
    assert torch.allclose(ca, cb, atol=1e-5)


def test_empty_cluster_is_reseeded_with_the_farthest_point():
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0]])
    init = torch.tensor([[0.0, 0.0], [100.0, 100.0]])  # the second centroid attracts nothing at first
    labels, centroids = kmeans_pseudo_labels(points, 2, init=init, iters=0)
    assert labels.tolist() == [0, 0, 0, 1]  # [5, 5] lies farthest from its own centroid
    assert torch.equal(centroids[1], points[3])


def test_spherical_centroids_are_unit_norm():
    _, points, _ = _blobs(noise=0.3)
    _, centroids = kmeans_pseudo_labels(points, 3, seed=0, spherical=True, iters=5)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(3), atol=1e-6)


def test_class_prototypes_by_hand():
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 3.0], [9.0, 9.0]])
    y = torch.tensor([0, 0, 1, -1])
    protos = class_prototypes(x, y)
    assert torch.allclose(protos, torch.tensor([[0.5**0.5, 0.5**0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="no labeled item"):
        class_prototypes(x, y, num_classes=3)


def test_nearest_centroid_and_kmeans_plus_plus_draws():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d, i = nearest_centroid(x, torch.tensor([[0.0, 0.0], [3.0, 0.0]]))
    assert torch.allclose(d, torch.tensor([0.0, 16.0])) and i.tolist() == [0, 1]
    new = kmeans_plus_plus(x, 1, torch.Generator().manual_seed(0), chosen=x[:1])
    assert torch.equal(new, x[1:])  # the only point at a positive distance


def test_bad_input_raises():
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans_pseudo_labels(torch.randn(3, 2), 4)
    with pytest.raises(ValueError, match="prototypes"):
        kmeans_pseudo_labels(torch.randn(10, 2), 2, init=torch.randn(2, 3))
    with pytest.raises(ValueError, match="init"):
        kmeans_pseudo_labels(torch.randn(10, 2), 2, init="random")
    with pytest.raises(ValueError, match="backend"):
        kmeans_pseudo_labels(torch.randn(10, 2), 2, backend="gpu")
