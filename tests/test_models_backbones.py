"""Backbones: shapes, gradient flow, input normalisation, pooling, weights loading, frozen BN, errors."""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from dmlkit.models import FrozenBatchNorm, build_backbone, frozen_batchnorm, list_backbones
from dmlkit.models.bninception import supports_size

PLAIN = {"mnist-net": 500, "cifar-net": 64, "resnet18-small": 512, "resnet18": 512}
GREY28, COLOUR32 = (1, 28), (3, 32)


@pytest.mark.parametrize("name", list(PLAIN))
@pytest.mark.parametrize("channels,size", [GREY28, COLOUR32])
def test_plain_backbones_output_shape(name: str, channels: int, size: int) -> None:
    backbone = build_backbone(name, in_channels=channels, image_size=size)
    out = backbone(torch.rand(2, channels, size, size))
    assert backbone.out_dim == PLAIN[name]
    assert out.shape == (2, PLAIN[name])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(PLAIN))
def test_gradient_reaches_every_parameter(name: str) -> None:
    backbone = build_backbone(name, in_channels=3, image_size=32)
    out = backbone(torch.rand(4, 3, 32, 32))
    (out @ torch.randn(backbone.out_dim)).pow(2).sum().backward()
    for pname, param in backbone.named_parameters():
        assert param.grad is not None, pname
        assert param.grad.abs().sum() > 0, pname


def test_resnets_match_torchvision_sizes() -> None:
    # torchvision's resnet18 has 11,689,512 parameters, 513,000 of them in the fc classifier; the small
    # variant swaps the 7x7x3x64 stem for a 3x3x3x64 one
    assert sum(p.numel() for p in build_backbone("resnet18", 3, 32).parameters()) == 11_689_512 - 513_000
    small = build_backbone("resnet18-small", 3, 32)
    assert sum(p.numel() for p in small.parameters()) == 11_689_512 - 513_000 - 64 * 3 * (49 - 9)
    # torchvision's resnet50: 25,557,032 parameters, 2,049,000 in fc
    assert sum(p.numel() for p in build_backbone("resnet50", 3, 32).parameters()) == 25_557_032 - 2_049_000


def test_mnist_net_sizes_follow_the_spec() -> None:
    # 28 -> 24 -> 12 -> 8 -> 4 -> 1 (specs/SSDML.md §2): conv3 sees 4x4 and leaves 1x1x500
    backbone = build_backbone("mnist-net", 1, 28)
    seen = {}
    backbone.trunk.conv3.register_forward_hook(lambda m, i, o: seen.update(inp=i[0].shape, out=o.shape))
    backbone(torch.rand(2, 1, 28, 28))
    assert seen["inp"] == (2, 50, 4, 4) and seen["out"] == (2, 500, 1, 1)
    # no non-linearity before conv3's ReLU (the MatConvNet LeNet)
    assert [type(m) for m in backbone.trunk] == [nn.Conv2d, nn.MaxPool2d, nn.Conv2d, nn.MaxPool2d, nn.Conv2d, nn.ReLU]


def test_cifar_net_last_conv_sees_4x4() -> None:
    backbone = build_backbone("cifar-net", 3, 32)
    seen = {}
    backbone.trunk.conv4.register_forward_hook(lambda m, i, o: seen.update(inp=i[0].shape, out=o.shape))
    backbone(torch.rand(2, 3, 32, 32))
    assert seen["inp"] == (2, 64, 4, 4) and seen["out"] == (2, 64, 1, 1)


def test_larger_inputs_are_globally_averaged() -> None:
    backbone = build_backbone("mnist-net", 1, 32)
    x = torch.rand(2, 1, 32, 32)
    fmap = backbone.feature_map(x)
    assert fmap.shape == (2, 500, 2, 2)
    torch.testing.assert_close(backbone(x), fmap.mean(dim=(2, 3)))


def test_too_small_images_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least 28 px"):
        build_backbone("mnist-net", 1, 24)
    with pytest.raises(ValueError, match="at least 25 px"):
        build_backbone("cifar-net", 3, 24)


def test_pooling_options() -> None:
    x = torch.rand(2, 3, 16, 16)
    backbone = build_backbone("resnet18-small", 3, 16, pooling="avg+max").eval()
    fmap = backbone.feature_map(x)
    torch.testing.assert_close(backbone(x), fmap.mean(dim=(2, 3)) + fmap.amax(dim=(2, 3)))
    backbone.pooling = "max"
    torch.testing.assert_close(backbone(x), fmap.amax(dim=(2, 3)))
    assert build_backbone("resnet18", 3, 32).pooling == "avg+max"  # STML/PLM code default
    with pytest.raises(ValueError, match="pooling"):
        build_backbone("resnet18", 3, 32, pooling="sum")


def test_input_normalisations() -> None:
    rgb = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    imagenet = build_backbone("resnet18", 3, 32, input_norm="imagenet")
    expected = (torch.tensor([0.2, 0.5, 0.8]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(imagenet.normalize(rgb)[0, :, 0, 0], expected)
    caffe = build_backbone("resnet18", 3, 32, input_norm="caffe")
    # BGR, 0-255, minus [104, 117, 128]
    torch.testing.assert_close(caffe.normalize(rgb)[0, :, 0, 0], torch.tensor([0.8 * 255 - 104, 0.5 * 255 - 117, 0.2 * 255 - 128]))
    centered = build_backbone("resnet18", 3, 32, input_norm="centered")
    torch.testing.assert_close(centered.normalize(rgb)[0, :, 0, 0], torch.tensor([-0.6, 0.0, 0.6]))
    with pytest.raises(ValueError, match="input_norm"):
        build_backbone("resnet18", 3, 32, input_norm="bgr")


def test_grey_input_is_repeated_for_rgb_normalisations() -> None:
    backbone = build_backbone("resnet18", in_channels=1, image_size=28)  # default input_norm imagenet
    assert backbone.trunk.conv1.in_channels == 3
    grey = torch.rand(2, 1, 28, 28)
    normalised = backbone.normalize(grey)
    assert normalised.shape == (2, 3, 28, 28)
    torch.testing.assert_close(normalised[:, 0] * 0.229 + 0.485, grey[:, 0])
    plain = build_backbone("resnet18-small", in_channels=1, image_size=28)
    assert plain.trunk.conv1.in_channels == 1


def test_wrong_channel_count_is_a_clear_error() -> None:
    backbone = build_backbone("mnist-net", 1, 28)
    with pytest.raises(ValueError, match=r"expects images \[B, 1, H, W\]"):
        backbone(torch.rand(2, 3, 28, 28))


def test_registry_and_errors() -> None:
    names = list_backbones()
    assert set(names) == {"efficientnet-lite0", "pixels", "mnist-net", "cifar-net", "resnet18-small", "resnet18",
                          "googlenet", "bn-inception", "resnet50",
                          "timm:<model>", "torchvision:<model>"}
    assert all(isinstance(text, str) and text for text in names.values())
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="in_channels"):
        build_backbone("mnist-net", in_channels=2)
    with pytest.raises(ValueError, match="timm:<model> or torchvision:<model>"):
        build_backbone("keras:resnet50", in_channels=3, image_size=224)


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_library_backbones_need_the_extra(library: str) -> None:
    if importlib.util.find_spec(library) is not None:
        pytest.skip(f"{library} is installed")
    with pytest.raises(ImportError) as info:
        build_backbone(f"{library}:resnet50", in_channels=3, image_size=224)
    assert str(info.value) == f"backbone '{library}:resnet50' needs the optional 'vision' extra: pip install 'dmlkit[vision]'"


def test_googlenet_plain_torch_with_torchvision_layout(tmp_path) -> None:
    source = build_backbone("googlenet", in_channels=3, image_size=32)
    assert source.input_norm == "centered" and source.pooling == "avg+max"
    out = source(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 1024)
    (out @ torch.randn(1024)).pow(2).sum().backward()
    assert all(p.grad is not None for p in source.parameters())
    # torchvision's GoogLeNet has 6,624,904 parameters, 1,025,000 of them in the fc classifier
    assert sum(p.numel() for p in source.parameters()) == 6_624_904 - 1_025_000
    state = dict(source.trunk.state_dict())
    assert state["inception3a.branch3.1.conv.weight"].shape == (32, 16, 3, 3)  # torchvision's 3x3 "5x5" branch
    state.update({"fc.weight": torch.zeros(1000, 1024), "fc.bias": torch.zeros(1000),
                  "aux1.conv.conv.weight": torch.zeros(128, 512, 1, 1), "aux2.fc2.bias": torch.zeros(1000)})
    torch.save(state, tmp_path / "googlenet.pth")
    loaded = build_backbone("googlenet", in_channels=1, image_size=28, pretrained=tmp_path / "googlenet.pth").eval()
    grey = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(loaded.feature_map(grey), source.eval().trunk(2 * grey.expand(-1, 3, -1, -1) - 1))


def test_bn_inception_plain_torch() -> None:
    backbone = build_backbone("bn-inception", in_channels=3, image_size=32)
    assert backbone.input_norm == "caffe" and backbone.pooling == "avg+max" and backbone.out_dim == 1024
    out = backbone(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 1024)
    (out @ torch.randn(1024)).pow(2).sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())
    grey = build_backbone("bn-inception", in_channels=1, image_size=32).eval()
    assert grey(torch.rand(2, 1, 32, 32)).shape == (2, 1024)
    # the stride-2 blocks need even maps: 48 px cannot pass, 224/227/256 can
    with pytest.raises(ValueError, match="cannot take 48 px"):
        build_backbone("bn-inception", in_channels=3, image_size=48)
    assert all(supports_size(size) for size in (32, 224, 227, 256))
    assert [size for size in range(28, 70) if supports_size(size)] == [31, 32, 33, 34, 35, 36, 37, 38] + list(range(63, 70))


def test_bn_inception_loads_cadene_layout(tmp_path) -> None:
    source = build_backbone("bn-inception", 3, 32)
    state = dict(source.trunk.state_dict())
    assert "conv1_7x7_s2.weight" in state and "inception_5b_pool_proj_bn.running_var" in state
    # Cadene's file: BN vectors stored as [1, C], no num_batches_tracked, a 1000-way last_linear
    state = {k: (v.unsqueeze(0) if k.endswith(("_bn.weight", "_bn.bias")) else v)
             for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["last_linear.weight"] = torch.zeros(1000, 1024)
    state["last_linear.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "bn_inception.pth")
    loaded = build_backbone("bn-inception", 3, 32, pretrained=tmp_path / "bn_inception.pth", bn_freeze=True)
    torch.testing.assert_close(loaded.trunk.inception_4c_3x3_bn.weight, source.trunk.inception_4c_3x3_bn.weight)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source.eval()(x))


# --- weights ------------------------------------------------------------------------------------


def test_reload_own_state_dict(tmp_path) -> None:
    source = build_backbone("cifar-net", 3, 32)
    path = tmp_path / "cifar.pth"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("cifar-net", 3, 32, pretrained=str(path))
    fresh = build_backbone("cifar-net", 3, 32)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x))
    assert not torch.allclose(fresh(x), source(x))


def test_load_published_layout_with_classifier_and_module_prefix(tmp_path) -> None:
    source = build_backbone("resnet18", 3, 32)
    state = {f"module.{k}": v for k, v in source.trunk.state_dict().items()}  # torchvision keys, DataParallel
    state["module.fc.weight"] = torch.zeros(1000, 512)
    state["module.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state}, path)
    loaded = build_backbone("resnet18", 3, 32, pretrained=path).eval()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source.eval()(x))


def test_mismatched_or_missing_weights(tmp_path) -> None:
    path = tmp_path / "mnist.pth"
    torch.save(build_backbone("mnist-net", 1, 28).state_dict(), path)
    with pytest.raises((ValueError, RuntimeError)):
        build_backbone("resnet18-small", 1, 28, pretrained=path)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_backbone("mnist-net", 1, 28, pretrained=tmp_path / "absent.pth")


def test_imagenet_weights_come_from_the_hub_cache_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_backbone("resnet18", 3, 224, pretrained="imagenet")
    source = build_backbone("resnet18", 3, 224)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.trunk.state_dict(), cache / "resnet18-f37072fd.pth")
    loaded = build_backbone("resnet18", 3, 224, pretrained="imagenet")
    torch.testing.assert_close(loaded.trunk.conv1.weight, source.trunk.conv1.weight)
    with pytest.raises(ValueError, match="no known ImageNet weights"):
        build_backbone("mnist-net", 1, 28, pretrained="imagenet")


# --- frozen BatchNorm ---------------------------------------------------------------------------


def test_frozen_batchnorm_matches_eval_batchnorm() -> None:
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(3, 4, 5, 5)
    frozen = frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm)
    torch.testing.assert_close(frozen(x), bn.eval()(x))


def test_bn_freeze_backbone() -> None:
    backbone = build_backbone("resnet18-small", 3, 16, bn_freeze=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    assert sum(isinstance(m, FrozenBatchNorm) for m in backbone.modules()) == 20
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    x = torch.rand(2, 3, 16, 16)
    out_train = backbone(x)
    torch.testing.assert_close(out_train, backbone.eval()(x))  # no batch statistics used
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all("bn" not in n and "downsample.1" not in n for n in trainable)


def _fake_classifier(out_channels: int) -> nn.Module:
    """A stand-in for a torchvision classifier: trunk children, then avgpool / fc (and a disabled aux head)."""
    model = nn.Module()
    model.conv1 = nn.Conv2d(3, 8, 3, stride=2)
    model.relu = nn.ReLU()
    model.conv2 = nn.Conv2d(8, out_channels, 1)
    model.aux1 = None
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.fc = nn.Linear(out_channels, 1000)
    return model


def test_library_wrappers_keep_the_trunk_and_load_published_keys(tmp_path, monkeypatch) -> None:
    import sys
    import types

    calls = {}

    def get_model(name, weights=None, **kwargs):
        calls["torchvision"] = (name, weights)
        return _fake_classifier(48)

    def create_model(name, pretrained=True, num_classes=1000, global_pool="avg"):
        calls["timm"] = (name, pretrained, num_classes, global_pool)
        return nn.Sequential(nn.Conv2d(3, 40, 3, stride=2), nn.ReLU())  # unpooled features, like timm's

    tv_models = types.ModuleType("torchvision.models")
    tv_models.get_model = get_model
    timm = types.ModuleType("timm")
    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.models", tv_models)
    monkeypatch.setitem(sys.modules, "timm", timm)

    backbone = build_backbone("torchvision:fakenet", in_channels=1, image_size=32)
    assert calls["torchvision"] == ("fakenet", None)  # never asks for weights (no download)
    assert backbone.trunk.stage_names == ["conv1", "relu", "conv2"]  # classifier children dropped
    assert backbone.out_dim == 48 and backbone.input_norm == "imagenet"
    assert backbone(torch.rand(2, 1, 32, 32)).shape == (2, 48)
    published = _fake_classifier(48).state_dict()  # the library's layout, classifier included
    torch.save(published, tmp_path / "fake.pth")
    loaded = build_backbone("torchvision:fakenet", 3, 32, pretrained=tmp_path / "fake.pth")
    torch.testing.assert_close(loaded.trunk.conv2.weight, published["conv2.weight"])

    from_timm = build_backbone("timm:fakenet", in_channels=3, image_size=32)
    assert calls["timm"] == ("fakenet", False, 0, "")
    assert from_timm.out_dim == 40 and from_timm(torch.rand(2, 3, 32, 32)).shape == (2, 40)
