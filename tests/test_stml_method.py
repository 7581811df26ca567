"""STML method: gradient flow, EMA teacher, views order, NN batches, options (spec §10 tests 6-9)."""
import dataclasses

import pytest
import torch
from torch import nn

from dmlkit.losses.relaxed_contrastive import relaxed_contrastive_loss, self_distillation_kl
from dmlkit.methods import method_class
from dmlkit.methods.base import BuildInfo, RefreshContext
from dmlkit.methods.stml import STML, Config

INFO = BuildInfo(channels=1, image_size=28, num_train=24, num_classes=0, dataset="toy", views_preset="grey28")


class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 5, stride=4), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
        self.out_dim = 4 * 6 * 6

    def forward(self, x):
        return self.net(x)


def tiny_stml(**options) -> STML:
    options = {"embedding_dim": 8, "g_dim": 12, "group_size": 2, **options}
    return STML(Config(**options), INFO, backbone_factory=TinyBackbone)


def batch(b: int = 6) -> dict:
    return {"image": torch.rand(b, 1, 28, 28), "label": torch.full((b,), -1),
            "index": torch.tensor([3, 7, 3, 1, 9, 0][:b])}  # a duplicated index, as NN groups produce


def test_training_loss_is_finite_and_only_the_student_gets_gradients():
    method = tiny_stml()
    method.train()
    losses = method.training_loss(batch())
    assert set(losses) == {"loss", "rc_f", "rc_g", "kl"}
    assert all(torch.isfinite(v) for v in losses.values())
    c = method.config
    expected = c.rc_weight_f * losses["rc_f"] + c.rc_weight_g * losses["rc_g"] + c.kl_weight * losses["kl"]
    torch.testing.assert_close(losses["loss"].detach(), expected)
    losses["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    for module in (method.student.backbone, method.student.head, method.f):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
        assert any(p.grad.abs().sum() > 0 for p in module.parameters())


def test_rc_on_g_leaves_f_untouched_and_kl_leaves_g_untouched():
    method = tiny_stml()
    x = torch.rand(8, 1, 28, 28)
    features = method.student.backbone(x)
    g, f = method.student.head(features), method.f(features)
    W = torch.rand(8, 8)
    relaxed_contrastive_loss(g, (W + W.T) / 2).backward(retain_graph=True)
    assert all(p.grad is None for p in method.f.parameters())
    method.zero_grad(set_to_none=True)
    self_distillation_kl(f, g).backward()
    assert all(p.grad is None for p in method.student.head.parameters())
    assert all(p.grad is not None for p in method.f.parameters())
    assert all(p.grad is not None for p in method.student.backbone.parameters() if p.requires_grad)


def test_views_are_view_major_and_teacher_sees_both(monkeypatch):
    import dmlkit.methods.stml as stml_module

    method = tiny_stml()

    class TaggedViews(nn.Module):  # view 1 = image, view 2 = 1 - image
        def forward(self, images):
            return torch.cat([images, 1 - images])

        def eval_transform(self, images):
            return images

    method.views = TaggedViews()
    seen = {}
    real = stml_module.contextual_similarity

    def spy(t, idx, *args, **kwargs):
        seen["idx"], seen["rows"] = idx.clone(), len(t)
        return real(t, idx, *args, **kwargs)

    monkeypatch.setattr(stml_module, "contextual_similarity", spy)
    inputs = []
    method.teacher.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    b = batch()
    method.training_loss(b)
    assert torch.equal(seen["idx"], torch.cat([b["index"], b["index"]]))
    assert seen["rows"] == 12
    torch.testing.assert_close(inputs[0], torch.cat([b["image"], 1 - b["image"]]))


def test_ema_teacher_update_and_order():
    method = tiny_stml(momentum=0.0)
    method.train()
    method.student(torch.rand(6, 1, 28, 28))  # moves BN statistics and num_batches_tracked
    method.before_optimizer_step()
    for (key, t), (_, s) in zip(method.teacher.state_dict().items(), method.student.state_dict().items()):
        torch.testing.assert_close(t, s, msg=key)
    assert method.teacher.backbone.net[1].num_batches_tracked.item() == 1

    method = tiny_stml(momentum=1.0)
    before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    method.before_optimizer_step()
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key

    method = tiny_stml(momentum=0.5, ema_before_step=False)
    t0 = method.teacher.head.linear.weight.clone()
    s0 = method.student.head.linear.weight.clone()
    method.before_optimizer_step()
    assert torch.equal(method.teacher.head.linear.weight, t0)
    method.after_step()
    torch.testing.assert_close(method.teacher.head.linear.weight, 0.5 * (t0 + s0))


def test_teacher_is_separate_frozen_and_stays_in_eval_mode():
    method = tiny_stml()
    method.train()
    assert not method.teacher.training and method.student.training
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert not torch.equal(method.teacher.head.linear.weight, method.student.head.linear.weight)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.images = torch.rand(n, 1, 28, 28)

    def __len__(self) -> int:
        return len(self.images)


def toy_context(dataset: ToyDataset, epoch: int = 0) -> RefreshContext:
    def embed(fn, data=None):
        with torch.no_grad():
            return fn(dataset.images)

    def knn(x, k):
        d = torch.cdist(x, x).pow(2)
        d.fill_diagonal_(-1.0)  # self at rank 0
        dist, idx = torch.topk(d, k, largest=False)
        return dist.clamp_min(0), idx

    return RefreshContext(epoch=epoch, train=dataset, embed=embed, knn=knn, device=torch.device("cpu"))


def test_refresh_builds_nn_groups_and_batches_are_groups():
    dataset = ToyDataset(24)
    method = tiny_stml(group_size=3)
    with pytest.raises(RuntimeError, match="refresh"):
        method.batch_sampler(dataset, 6, seed=0, epoch=0)
    method.eval()
    method.refresh(toy_context(dataset))
    table = method.neighbours
    assert table.shape == (24, 3) and torch.equal(table[:, 0], torch.arange(24))
    batches = list(method.batch_sampler(dataset, 6, seed=0, epoch=0))
    assert len(batches) == 24 // 6
    for b in batches:
        assert len(b) == 6
        for start in range(0, 6, 3):
            assert b[start:start + 3] == table[b[start]].tolist()
    # a changed student gives changed lists at the next epoch start
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(torch.randn_like(p))
    method.refresh(toy_context(dataset, epoch=1))
    assert not torch.equal(method.neighbours, table)


def test_refresh_every_and_teacher_source():
    dataset = ToyDataset(24)
    method = tiny_stml(group_size=3, refresh_nn_every_epochs=2, nn_source="teacher_g")
    method.refresh(toy_context(dataset, epoch=0))
    table = method.neighbours.clone()
    with torch.no_grad():
        for p in method.teacher.parameters():
            p.add_(torch.randn_like(p))
    method.refresh(toy_context(dataset, epoch=1))
    assert torch.equal(method.neighbours, table)
    method.refresh(toy_context(dataset, epoch=2))
    assert not torch.equal(method.neighbours, table)


def test_embed_is_raw_f_and_parameter_groups():
    method = tiny_stml(emb_lr=1e-2)
    method.eval()
    images = torch.rand(5, 1, 28, 28)
    out = method.embed(images)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out, method.f(method.student.backbone(images)))
    groups = method.parameter_groups(1e-4, 1e-2)
    assert [g["lr"] for g in groups] == [1e-4, 1e-2]
    grouped = {id(p) for g in groups for p in g["params"]}
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    assert grouped == trainable
    assert not grouped & {id(p) for p in method.teacher.parameters()}


def test_registry_options_and_errors():
    assert method_class("stml") is STML
    assert STML.uses_labels == "none"
    assert STML.defaults["batch_size"] == 120 and STML.defaults["optimizer"] == "adamp"
    c = Config()
    assert (c.sigma, c.delta, c.group_size, c.neighbourhood, c.expansion, c.momentum) == (3.0, 1.0, 5, 10, 5, 0.999)
    assert Config(group_size=2).neighbourhood == 4 and Config(k=5).expansion == 2
    names = {f.name for f in dataclasses.fields(Config)}
    assert {"sigma", "delta", "group_size", "views", "k", "qe_size", "momentum", "ema_before_step", "nn_source",
            "student_norm", "teacher_norm", "rc_normaliser", "kl_temperature", "rc_weight_f", "rc_weight_g",
            "kl_weight", "tie_break", "refresh_nn_every_epochs", "emb_lr", "bn_freeze"} <= names
    with pytest.raises(ValueError, match="no option"):
        STML.from_options({"sigmaa": 2}, INFO)
    for bad in ({"nn_source": "labels"}, {"rc_normaliser": "mean"}, {"momentum": 2.0}, {"views": 1},
                {"tie_break": "random"}, {"sigma": 0}):
        with pytest.raises(ValueError):
            Config(**bad)


def test_bn_freeze_freezes_student_batchnorm():
    method = tiny_stml(bn_freeze=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in method.modules())
    method.train()
    method.training_loss(batch())["loss"].backward()



def load_stml_preset(name: str) -> dict:
    """A preset's YAML, read directly (importing the engine would pull in Lightning)."""
    from pathlib import Path

    import yaml

    import dmlkit

    return yaml.safe_load((Path(dmlkit.__file__).parent / "configs" / f"{name}.yaml").read_text())


def test_presets_are_valid_stml_settings():
    from pathlib import Path

    import dmlkit

    names = sorted(path.stem for path in (Path(dmlkit.__file__).parent / "configs").glob("stml-*.yaml"))
    assert {"stml-fashion-mnist", "stml-digits", "stml-cub200", "stml-cars196", "stml-sop"} <= set(names)
    for name in names:
        preset = load_stml_preset(name)
        assert preset["method"] == "stml", name
        config = Config(**preset.get("options", {}))
        assert preset.get("batch_size", STML.defaults["batch_size"]) % config.group_size == 0, name
    sop = Config(**load_stml_preset("stml-sop")["options"])
    assert (sop.group_size, sop.delta, sop.momentum, sop.emb_lr) == (2, 0.9, 0.9, 0.01)


def test_fashion_mnist_preset_builds_the_small_network():
    method = STML.from_options(load_stml_preset("stml-fashion-mnist")["options"],
                               BuildInfo(1, 28, 100, 0, "fashion-mnist", "grey28"))
    assert method.backbone_name == "mnist-net"
    assert method.embed(torch.rand(3, 1, 28, 28)).shape == (3, 128)
