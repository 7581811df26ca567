"""Run configuration: precedence, --set parsing, validation."""
import pytest

from dmlkit.engine.config import ConfigError, load_preset, parse_overrides, resolve_config


def test_parse_overrides_types_and_routing():
    out = parse_overrides(["epochs=3", "lr=1e-4", "sigma=2.5", "options.delta=0.9", "pictures=false", "recall=[1,2]"])
    assert out["epochs"] == 3 and isinstance(out["epochs"], int)
    assert out["lr"] == pytest.approx(1e-4) and isinstance(out["lr"], float)
    assert out["pictures"] is False
    assert out["options"] == {"sigma": 2.5, "delta": 0.9, "recall": [1, 2]}


def test_parse_overrides_rejects_missing_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_method_defaults_then_preset_then_settings(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("method: supervised\nepochs: 7\nbatch_size: 64\noptions:\n  embedding_dim: 32\n")
    config = resolve_config({"preset": str(preset), "batch_size": 32, "options": {"loss": "ContrastiveLoss"}})
    assert config.method == "supervised"
    assert config.epochs == 7  # preset over the method default
    assert config.batch_size == 32  # explicit over the preset
    assert config.optimizer == "adamw"  # the method default
    assert config.options == {"embedding_dim": 32, "loss": "ContrastiveLoss"}


def test_unknown_setting_and_preset_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve_config({"method": "supervised", "epochz": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: supervised\nepohcs: 2\n")
    with pytest.raises(ConfigError, match="epohcs"):
        load_preset(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_preset("no-such-preset")
    with pytest.raises(ConfigError, match="unknown method"):
        resolve_config({"method": "nope"})


@pytest.mark.parametrize("key,value", [("epochs", 0), ("batch_size", -1), ("protocol", "weird"), ("on_nan", "ignore"),
                                       ("labels_per_class", 0)])
def test_invalid_values(key, value):
    with pytest.raises(ConfigError, match=key.split("_")[0]):
        resolve_config({"method": "supervised", key: value})


@pytest.mark.parametrize("accelerator, channels_last", [("cpu", True), ("gpu", False)])
def test_convolution_weights_are_channels_last_on_cpu(accelerator, channels_last):
    import torch

    from dmlkit.engine.run import build_method, prepare_data

    config = resolve_config({"method": "supervised", "dataset": "digits", "accelerator": accelerator,
                             "options": {"backbone": "resnet18-small"}})
    method = build_method(config, prepare_data(config, "all").train)
    convs = [p for p in method.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]  # else both layouts agree
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) == channels_last for p in convs)


def test_train_subset_too_small_for_the_labeled_items_of_a_semi_supervised_run_is_an_error():
    from dmlkit.engine.run import prepare_data

    config = resolve_config({"method": "ssdml", "dataset": "digits", "labels_per_class": 10, "train_subset": 50})
    with pytest.raises(ValueError, match="keeps all 100 labeled items and leaves no room for unlabeled ones"):
        prepare_data(config, "partial")
    config = resolve_config({"method": "ssdml", "dataset": "digits", "labels_per_class": 10, "train_subset": 150})
    train = prepare_data(config, "partial").train
    assert len(train) == 150 and (train.labels >= 0).sum() == 100


def test_view_strength_is_a_checked_run_setting_every_method_receives():
    import typing

    from dmlkit.data.views import Views
    from dmlkit.methods import REGISTRY, method_class
    from dmlkit.methods.base import BuildInfo

    assert resolve_config({"method": "supervised"}).view_strength == 1.0
    assert resolve_config({"method": "supervised", "view_strength": 0}).view_strength == 0
    assert parse_overrides(["view_strength=0.5"]) == {"view_strength": 0.5}
    for bad in (-0.5, float("nan"), "strong"):
        with pytest.raises(ConfigError, match="view_strength"):
            resolve_config({"method": "supervised", "view_strength": bad})
    info = BuildInfo(channels=1, image_size=28, num_train=200, num_classes=10, views_preset="grey28", view_strength=0.3)
    for name in REGISTRY:
        cls = method_class(name)
        hints = typing.get_type_hints(cls.Config)
        options = {"backbone": "mnist-net", "pretrained": None}
        method = cls.from_options({k: v for k, v in options.items() if k in hints}, info)
        strengths = [views.strength for views in method.modules() if isinstance(views, Views)]
        assert strengths and set(strengths) == {0.3}, name
    from dmlkit.engine.run import build_method, prepare_data

    config = resolve_config({"method": "supervised", "dataset": "digits", "view_strength": 0.25,
                             "options": {"backbone": "resnet18-small"}})
    method = build_method(config, prepare_data(config, "all").train)
    assert [v.strength for v in method.modules() if isinstance(v, Views)] == [0.25]


def test_every_shipped_preset_resolves_to_valid_settings():
    from dmlkit.engine.config import list_presets

    presets = list_presets()
    assert {"ssdml-glyphs", "deep-lrml-glyphs", "deep-isdml-glyphs", "supervised-glyphs-5labels", "slade-glyphs",
            "drml-proxyanchor-glyphs", "drml-cosface-glyphs", "proxyanchor-glyphs", "cosface-glyphs"} <= set(presets)
    for name, first_line in presets.items():
        config = resolve_config({"preset": name})  # unknown keys, bad types or ranges raise ConfigError
        assert first_line and config.method and config.dataset, name
