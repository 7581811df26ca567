"""Instance discrimination (issue 9): NT-Xent positives, a hand-computed 2-image value, momentum encoder
(EMA) and queue (contents, pointer), gradient flow with a tiny stand-in network, presets."""

import math

import pytest
import torch
from torch import nn

from dmlkit.methods.base import BuildInfo
from dmlkit.methods.instance import Config, InstanceDiscrimination, instance_ids

INFO = BuildInfo(channels=1, image_size=12, num_train=40, dataset="toy", views_preset="grey28")
D = 8


def _net():
    return nn.Sequential(nn.Flatten(), nn.Linear(144, 16), nn.ReLU(), nn.Linear(16, D))


def _method(**options):
    return InstanceDiscrimination(Config(embedding_dim=D, **options), INFO, network=_net())


class FixedViews(nn.Module):
    """Deterministic stand-in for Views: view 1 = the images, view 2 = the images scaled by 0.5."""

    def forward(self, images):
        return torch.cat([images, 0.5 * images])

    def eval_transform(self, images):
        return images


def _batch(n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 1, 12, 12, generator=gen), "index": torch.arange(n)}


def _spy(method):
    """Record the arguments of every call to the method's loss."""
    calls, real = [], method.loss_fn.forward

    def forward(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    method.loss_fn.forward = forward
    return calls


def _ntxent_reference(q, q_ids, refs, ref_ids, tau, exclude=None):
    """NT-Xent from the definition, one anchor at a time: -log e^{s_ip/τ} / (e^{s_ip/τ} + Σ_neg e^{s_in/τ}),
    averaged over every (anchor, positive) pair; ``exclude[i]`` is a reference column never compared with i."""
    q, refs = nn.functional.normalize(q.detach(), dim=1), nn.functional.normalize(refs.detach(), dim=1)
    terms = []
    for i in range(len(q)):
        sims = [float(q[i] @ refs[j]) / tau for j in range(len(refs))]
        negatives = [s for j, s in enumerate(sims) if ref_ids[j] != q_ids[i] and j != (exclude[i] if exclude else -1)]
        for j, s in enumerate(sims):
            if ref_ids[j] == q_ids[i] and j != (exclude[i] if exclude else -1):
                terms.append(-math.log(math.exp(s) / (math.exp(s) + sum(math.exp(t) for t in negatives))))
    return sum(terms) / len(terms)


def test_instance_ids_pair_the_two_views_of_each_image():
    assert instance_ids(3).tolist() == [0, 1, 2, 0, 1, 2]
    assert instance_ids(2, offset=5).tolist() == [5, 6, 5, 6]


def test_simclr_labels_passed_to_the_loss_are_the_two_views_of_one_image():
    method = _method()
    method.views = FixedViews()
    calls = _spy(method)
    batch = _batch(4)
    method.training_loss(batch)
    method.training_loss(_batch(4, seed=1))
    (embeddings, labels), _ = calls[0]
    assert labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    # row i and row b + i are view 1 and view 2 of image i
    expected = nn.functional.normalize(method.network(torch.cat([batch["image"], 0.5 * batch["image"]])), dim=1)
    torch.testing.assert_close(embeddings, expected)
    assert calls[1][0][1].tolist() == [4, 5, 6, 7, 4, 5, 6, 7]  # ids keep growing: never shared across batches


def test_ntxent_two_images_hand_value():
    """z = [a, b, a', b'] = [(1,0), (0,1), (.6,.8), (-.6,.8)], τ = 0.5 (cosines .6 / .8 for the positives)."""
    method = InstanceDiscrimination(Config(embedding_dim=2, temperature=0.5), INFO, network=nn.Flatten())

    class Stub(nn.Module):
        def forward(self, images):
            return torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-0.6, 0.8]]).view(4, 1, 1, 2)

    method.views = Stub()
    loss = method.training_loss({"image": torch.zeros(2, 1, 1, 2), "index": torch.arange(2)})["loss"]
    e = math.exp
    by_anchor = [
        -math.log(e(1.2) / (e(1.2) + e(0.0) + e(-1.2))),  # a: positive a' (.6), negatives b (0), b' (-.6)
        -math.log(e(1.6) / (e(1.6) + e(0.0) + e(1.6))),  # b: positive b' (.8), negatives a (0), a' (.8)
        -math.log(e(1.2) / (e(1.2) + e(1.6) + e(0.56))),  # a': positive a, negatives b (.8), b' (.28)
        -math.log(e(1.6) / (e(1.6) + e(-1.2) + e(0.56))),  # b': positive b, negatives a (-.6), a' (.28)
    ]
    assert loss.item() == pytest.approx(sum(by_anchor) / 4, abs=1e-6)
    assert loss.item() == pytest.approx(0.6428929321, abs=1e-6)


def test_simclr_loss_matches_definition_and_gradients_reach_the_network():
    method = _method(temperature=0.3)
    batch = _batch(5)
    torch.manual_seed(3)
    loss = method.training_loss(batch)["loss"]
    torch.manual_seed(3)
    z = method.network(method.views(batch["image"]))
    ids = instance_ids(5).tolist()
    reference = _ntxent_reference(z, ids, z, ids, 0.3, exclude=list(range(10)))
    assert loss.item() == pytest.approx(reference, rel=1e-5)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.network.parameters())


def test_labels_are_never_read():
    method = _method()
    batch = _batch(4)
    torch.manual_seed(0)
    without = method.training_loss(batch)["loss"]
    method.next_id.zero_()
    torch.manual_seed(0)
    with_labels = method.training_loss({**batch, "label": torch.tensor([0, 0, 1, 1])})["loss"]
    assert without.item() == with_labels.item()


def test_momentum_encoder_is_an_ema_of_the_network_after_the_step():
    method = _method(momentum=0.9)
    optimizer = torch.optim.SGD(method.parameter_groups(0.1, 0.0), lr=0.1)
    before = [p.detach().clone() for p in method.momentum_encoder.parameters()]
    loss = method.training_loss(_batch(4))["loss"]
    loss.backward()
    assert all(p.grad is None for p in method.momentum_encoder.parameters())  # keys carry no gradient
    optimizer.step()
    method.after_step()
    for old, new, online in zip(before, method.momentum_encoder.parameters(), method.network.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online.detach())
    assert not method.momentum_encoder.training
    method.train()
    assert not method.momentum_encoder.training  # stays in eval mode


def test_momentum_without_queue_contrasts_queries_with_the_keys():
    method = _method(momentum=0.5, temperature=0.2)
    method.views = FixedViews()
    calls = _spy(method)
    batch = _batch(4)
    loss = method.training_loss(batch)["loss"]
    (q, labels), kwargs = calls[0]
    assert labels.tolist() == [0, 1, 2, 3] and kwargs["ref_labels"].tolist() == [0, 1, 2, 3]
    keys = nn.functional.normalize(method.momentum_encoder(0.5 * batch["image"]), dim=1)
    torch.testing.assert_close(kwargs["ref_emb"], keys)
    reference = _ntxent_reference(q.detach(), labels.tolist(), keys, [0, 1, 2, 3], 0.2)
    assert loss.item() == pytest.approx(reference, rel=1e-5)


def test_queue_contents_and_pointer_after_enqueue():
    method = _method(momentum=0.99, queue_size=6)
    method.views = FixedViews()
    memory = method.loss_fn
    first, second = _batch(4, seed=0), _batch(4, seed=1)
    loss = method.training_loss(first)["loss"]
    keys1 = nn.functional.normalize(method.momentum_encoder(0.5 * first["image"]), dim=1)
    torch.testing.assert_close(memory.embedding_memory[:4], keys1)
    assert memory.label_memory[:4].tolist() == [0, 1, 2, 3]
    assert memory.queue_idx == 4 and not memory.has_been_filled
    # the only positive of query i is key i; the other keys are negatives
    queries = nn.functional.normalize(method.network(first["image"]), dim=1).detach()
    assert loss.item() == pytest.approx(_ntxent_reference(queries, [0, 1, 2, 3], keys1, [0, 1, 2, 3], 0.5), rel=1e-5)

    method.after_step()
    loss = method.training_loss(second)["loss"]
    keys2 = nn.functional.normalize(method.momentum_encoder(0.5 * second["image"]), dim=1)
    torch.testing.assert_close(memory.embedding_memory[[4, 5, 0, 1]], keys2)  # wraps around
    torch.testing.assert_close(memory.embedding_memory[[2, 3]], keys1[2:])  # the oldest two were overwritten
    assert memory.label_memory.tolist() == [6, 7, 2, 3, 4, 5]
    assert memory.queue_idx == 2 and memory.has_been_filled
    queries = nn.functional.normalize(method.network(second["image"]), dim=1).detach()
    reference = _ntxent_reference(queries, [4, 5, 6, 7], memory.embedding_memory, memory.label_memory.tolist(), 0.5)
    assert loss.item() == pytest.approx(reference, rel=1e-5)

    state = method.extra_state_for_checkpoint()
    restored = _method(momentum=0.99, queue_size=6)
    restored.load_state_dict(method.state_dict())
    restored.load_extra_state_from_checkpoint(state)
    assert restored.loss_fn.queue_idx == 2 and restored.loss_fn.has_been_filled
    assert int(restored.next_id) == 8


def test_queue_without_momentum_uses_network_keys_and_gradients_reach_the_network():
    method = _method(queue_size=8)
    assert method.momentum_encoder is None
    loss = method.training_loss(_batch(4))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.network.parameters())


def test_bad_options_and_small_queue():
    with pytest.raises(ValueError, match="temperature"):
        Config(temperature=0.0)
    with pytest.raises(ValueError, match="momentum"):
        Config(momentum=1.5)
    with pytest.raises(ValueError, match="queue_size"):
        Config(queue_size=-1)
    with pytest.raises(ValueError, match="raise queue_size"):
        _method(queue_size=2).training_loss(_batch(4))
    with pytest.raises(ValueError, match="no option"):
        InstanceDiscrimination.from_options({"tau": 0.1}, INFO)


def test_presets_share_stml_network_and_build():
    from dmlkit.engine.config import load_preset

    stml = load_preset("stml-fashion-mnist")["options"]
    for name in ("instance-fashion-mnist", "instance-fashion-mnist-moco"):
        preset = load_preset(name)
        assert preset["method"] == "instance" and preset["dataset"] == "fashion-mnist"
        assert preset["options"]["backbone"] == stml["backbone"]
        assert preset["options"]["embedding_dim"] == stml["embedding_dim"]
        assert preset["batch_size"] == load_preset("stml-fashion-mnist")["batch_size"]
    info = BuildInfo(channels=1, image_size=28, num_train=100, dataset="fashion-mnist", views_preset="grey28")
    method = InstanceDiscrimination.from_options(load_preset("instance-fashion-mnist-moco")["options"], info)
    assert method.embed(torch.rand(3, 1, 28, 28)).shape == (3, 128)
    assert method.loss_fn.memory_size == 4096


@pytest.mark.parametrize("with_memory", [False, True])
def test_loss_equals_pml_ntxent_loss_with_one_positive_per_anchor(with_memory):
    """SupConLoss is used for speed (O(n²)); with one positive per anchor it must equal NTXentLoss exactly,
    in-batch and through CrossBatchMemory with earlier keys in the queue."""
    from pytorch_metric_learning.losses import CrossBatchMemory, NTXentLoss, SupConLoss

    torch.manual_seed(0)
    ours, reference = SupConLoss(temperature=0.2), NTXentLoss(temperature=0.2)
    if not with_memory:
        z = torch.nn.functional.normalize(torch.randn(16, 6), dim=1)
        ids = instance_ids(8)  # [u ; u]: the two views share an id
        assert ours(z, ids).item() == pytest.approx(reference(z, ids).item(), rel=1e-6)
        return
    ours, reference = CrossBatchMemory(ours, 6, memory_size=20), CrossBatchMemory(reference, 6, memory_size=20)
    for step in range(3):
        z = torch.nn.functional.normalize(torch.randn(8, 6), dim=1)
        ids = instance_ids(4, offset=4 * step)
        enqueue = torch.arange(8) >= 4
        assert ours(z, ids, enqueue_mask=enqueue).item() == pytest.approx(
            reference(z, ids, enqueue_mask=enqueue).item(), rel=1e-6)
