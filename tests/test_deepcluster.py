"""DeepCluster (issue 9): pseudo labels are the k-means cluster ids of the embedding they came from,
re-clustering resets the classifier, uniform sampling over clusters, the loss against an independent
reference (pytorch-metric-learning's NormalizedSoftmaxLoss), gradient flow with a tiny stand-in network."""

import numpy as np
import pytest
import torch
from torch import nn

from dmlkit.methods.base import BuildInfo, RefreshContext
from dmlkit.methods.deepcluster import Config, DeepCluster, uniform_cluster_batches

N, D = 40, 4
INFO = BuildInfo(channels=1, image_size=2, num_train=N, dataset="toy", views_preset="grey28")


class Split:
    def __len__(self):
        return N


def _blobs(seed=0):
    """4 tight, well-separated blobs of 10 points in R^4 (as 1x2x2 images); blob id = row // 10."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(D) * 3 + 0.5
    points = centres.repeat_interleave(10, 0) + 0.01 * torch.randn(N, D, generator=gen)
    return points.view(N, 1, 2, 2)


def _method(**options):
    options = {"embedding_dim": D, "n_clusters": 4, **options}
    network = nn.Sequential(nn.Flatten(), nn.Linear(D, D))
    with torch.no_grad():
        network[1].weight.copy_(torch.eye(D))
        network[1].bias.zero_()
    return DeepCluster(Config(**options), INFO, network=network)


def _context(images, epoch=0, seen=None):
    def embed(fn, dataset=None):
        out = fn(images).detach()
        if seen is not None:
            seen.append(out)
        return out

    return RefreshContext(epoch=epoch, train=Split(), embed=embed, knn=None, device=torch.device("cpu"), seed=0)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_pseudo_labels_are_cluster_ids_of_the_embedding(init):
    images, seen = _blobs(), []
    method = _method(kmeans_init=init)
    method.refresh(_context(images, seen=seen))
    labels = method.pseudo_labels
    z = seen[0]
    torch.testing.assert_close(z, nn.functional.normalize(images.view(N, D), dim=1))  # the current embedding
    # every point's label is its nearest centroid (centroid = mean of its cluster), no cluster empty
    assert len(set(labels.tolist())) == 4
    centroids = torch.stack([z[labels == c].mean(0) for c in range(4)])
    assert torch.equal(torch.cdist(z, centroids).argmin(1), labels)
    if init == "k-means++":  # k-means++ seeding finds the 4 blobs: one cluster per blob
        blobs = torch.arange(N) // 10
        assert all(len(set(labels[blobs == b].tolist())) == 1 for b in range(4))


def test_reclustering_follows_the_network_and_resets_the_classifier():
    images, seen = _blobs(), []
    method = _method()
    method.refresh(_context(images, epoch=0, seen=seen))
    first_labels = method.pseudo_labels.clone()
    with torch.no_grad():
        method.classifier_weight.add_(1.0)  # as if trained
        perm = torch.tensor([1, 0, 3, 2])
        method.network[1].weight.copy_(torch.eye(D)[perm] + torch.eye(D)[perm.roll(1)])  # merges blobs pairwise
    method.refresh(_context(images, epoch=0))  # same epoch (resumed run): nothing changes
    assert torch.equal(method.pseudo_labels, first_labels) and method.classifier_weight.min() > 0.9
    method.refresh(_context(images, epoch=1, seen=seen))
    z, labels = seen[1], method.pseudo_labels
    assert not torch.equal(seen[0], z)
    centroids = torch.stack([z[labels == c].mean(0) for c in range(4)])
    assert torch.equal(torch.cdist(z, centroids).argmin(1), labels)
    assert int(method.clustered_epoch) == 1
    weight = method.classifier_weight.detach()
    assert weight.abs().max() < 0.1 and 0.003 < weight.std() < 0.03  # fresh N(0, 0.01²) draw


def test_recluster_every_epochs():
    images = _blobs()
    method = _method(recluster_every_epochs=2)
    method.refresh(_context(images, epoch=0))
    with torch.no_grad():
        method.classifier_weight.fill_(1.0)
    method.refresh(_context(images, epoch=1))
    assert int(method.clustered_epoch) == 0 and method.classifier_weight.min() == 1.0
    method.refresh(_context(images, epoch=2))
    assert int(method.clustered_epoch) == 2 and method.classifier_weight.abs().max() < 0.1


def test_uniform_sampling_gives_every_cluster_the_same_share():
    labels = torch.tensor([2] * 8 + [0] + [1] * 3)  # clusters of 8, 1 and 3 items; 12 slots, 4 each
    batches = uniform_cluster_batches(labels, 4, torch.Generator().manual_seed(0))
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)
    items = torch.tensor([i for b in batches for i in b])
    assert torch.bincount(labels[items], minlength=3).tolist() == [4, 4, 4]
    assert items[labels[items] == 2].unique().numel() == 4  # a large cluster: no repeats
    assert sorted(set(items[labels[items] == 1].tolist())) == [9, 10, 11]  # a small one: cycled, all members
    again = uniform_cluster_batches(labels, 4, torch.Generator().manual_seed(0))
    assert again == batches


def test_batch_sampler_needs_refresh_and_uses_pseudo_labels():
    method = _method()
    with pytest.raises(RuntimeError, match="refresh"):
        method.batch_sampler(Split(), 8, 0, 0)
    with pytest.raises(RuntimeError, match="refresh"):
        method.training_loss({"image": _blobs()[:4], "index": torch.arange(4)})
    method.refresh(_context(_blobs()))
    batches = method.batch_sampler(Split(), 8, seed=0, epoch=0)
    assert len(batches) == 5
    counts = np.bincount(method.pseudo_labels[torch.tensor([i for b in batches for i in b])].numpy(), minlength=4)
    assert counts.tolist() == [10, 10, 10, 10]
    plain = _method(uniform_sampling=False)
    plain.refresh(_context(_blobs()))
    assert sorted(i for b in plain.batch_sampler(Split(), 8, 0, 0) for i in b) == list(range(N))


def test_normalized_softmax_loss_matches_pytorch_metric_learning_and_gradients_flow():
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

    method = _method(temperature=0.1)
    method.refresh(_context(_blobs()))
    method.views = nn.Identity()  # no augmentation: compare the loss itself
    images, index = _blobs()[::3], torch.arange(N)[::3]
    loss = method.training_loss({"image": images, "index": index})["loss"]  # no "label" key: labels never read
    reference = NormalizedSoftmaxLoss(4, D, temperature=0.1)
    with torch.no_grad():
        reference.W.copy_(method.classifier_weight.T)
    expected = reference(method.network(images), method.pseudo_labels[index])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.network.parameters())
    assert method.classifier_weight.grad.abs().sum() > 0


def test_softmax_variant_is_a_linear_classifier_and_trains():
    method = _method(loss="softmax")
    method.refresh(_context(_blobs()))
    assert method.classifier_bias is not None and method.classifier_bias.abs().sum() == 0
    method.views = nn.Identity()
    z = nn.functional.normalize(method.network(_blobs()), dim=1)
    expected = nn.functional.cross_entropy(z @ method.classifier_weight.T + method.classifier_bias, method.pseudo_labels)
    loss = method.training_loss({"image": _blobs(), "index": torch.arange(N), "label": torch.zeros(N)})["loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert method.classifier_bias.grad.abs().sum() > 0 and method.network[1].weight.grad.abs().sum() > 0


def test_augmented_training_loss_is_finite_with_a_small_image_network():
    info = BuildInfo(channels=1, image_size=12, num_train=N, dataset="toy", views_preset="grey28")
    network = nn.Sequential(nn.Flatten(), nn.Linear(144, 16), nn.ReLU(), nn.Linear(16, 8))
    method = DeepCluster(Config(embedding_dim=8, n_clusters=5), info, network=network)
    images = torch.rand(N, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    method.refresh(_context(images))
    batch = method.batch_sampler(Split(), 8, 0, 0)[0]
    loss = method.training_loss({"image": images[batch], "index": torch.tensor(batch)})["loss"]
    loss.backward()
    assert torch.isfinite(loss) and network[1].weight.grad.abs().sum() > 0


def test_bad_options():
    for options, word in (({"n_clusters": 1}, "n_clusters"), ({"loss": "arcface"}, "loss"),
                          ({"temperature": 0}, "temperature"), ({"kmeans_backend": "sklearn"}, "kmeans_backend"),
                          ({"kmeans_init": "kmeans"}, "kmeans_init")):
        with pytest.raises(ValueError, match=word):
            Config(**options)
    with pytest.raises(ValueError, match="lower the option n_clusters"):
        _method(n_clusters=50).refresh(_context(_blobs()))


def test_presets_share_stml_network_and_build():
    from dmlkit.engine.config import load_preset

    stml = load_preset("stml-fashion-mnist")
    preset = load_preset("deepcluster-fashion-mnist")
    assert preset["method"] == "deepcluster" and preset["dataset"] == "fashion-mnist"
    for key in ("backbone", "embedding_dim"):
        assert preset["options"][key] == stml["options"][key]
    assert preset["batch_size"] == stml["batch_size"] and preset["epochs"] == stml["epochs"]
    info = BuildInfo(channels=1, image_size=28, num_train=100, dataset="fashion-mnist", views_preset="grey28")
    method = DeepCluster.from_options(preset["options"], info)
    assert method.embed(torch.rand(3, 1, 28, 28)).shape == (3, 128)
    assert method.classifier_weight.shape == (100, 128) and method.pseudo_labels.shape == (100,)
