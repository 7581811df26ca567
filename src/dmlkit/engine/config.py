"""Run configuration: paper defaults from the method, then a YAML preset, then the user's settings.

Precedence (later wins): :class:`RunConfig` field defaults < the method's ``defaults`` < the preset
YAML (``--preset NAME`` or a path) < explicit arguments and ``--set key=value`` overrides. A ``--set``
key that is not a run setting is a method option (``--set sigma=2`` sets ``options.sigma``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A bad setting; the message names it and the fix. The CLI exits with code 2."""


@dataclass
class RunConfig:
    """Every setting of one training run. ``None`` means: the method's default."""

    method: str = "stml"
    dataset: str = "fashion-mnist"
    out: str | None = None  # None: a new runs/<date>-<time>-<method>-<dataset>
    protocol: str = "standard"
    labels_per_class: int | None = None
    fold: int | None = None
    val_fraction: float = 0.0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    scheduler: str | None = None
    seed: int = 0
    eval_every: int = 1
    train_subset: int | None = None
    test_subset: int | None = None
    data_root: str | None = None
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    threads: int | None = None
    pictures: bool = True
    picture_every: int | None = None
    progress: bool = True
    on_nan: str = "stop"
    early_stop_patience: int | None = None  # epochs without improvement of early_stop_monitor; None/0 = off
    early_stop_monitor: str | None = None  # an evaluation key, e.g. val_recall@1 (needs a validation split)
    early_stop_collapse: float | None = None  # also stop when the monitor falls to this fraction of its best
    quality_every: int = 0  # record the pseudo-supervision quality every N epochs (and at 0 and the last); 0 = off
    quality_items: int = 2000  # training items of that quality subset (uniform, drawn once with the seed)
    view_strength: float = 1.0  # scales every training augmentation's magnitude: 1 = the views preset, 0 = none
    options: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)}
TRAINING_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "scheduler",
                 "early_stop_patience", "early_stop_monitor", "early_stop_collapse")


def list_presets() -> dict[str, str]:
    """``name -> first comment line`` of every preset shipped in ``dmlkit/configs``."""
    out = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.read_text() else ""
        out[path.stem] = first.lstrip("# ").strip()
    return out


def load_preset(name_or_path: str) -> dict[str, Any]:
    """Read a preset by name (``stml-fashion-mnist``) or YAML path; unknown keys are errors."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"preset '{name_or_path}' not found (looked for {path}); `dmlkit presets` lists the shipped ones"
        )
    from dmlkit.engine.validate import load_settings_yaml

    return load_settings_yaml(path, "preset")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=3", "sigma=2", "options.delta=0.9"]`` -> ``{"epochs": 3, "options": {"sigma": 2, "delta": 0.9}}``.

    Values are parsed as YAML scalars (``3`` -> int, ``1e-4`` -> float, ``true`` -> bool, ``[1,2]`` -> list).
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got '{pair}'")
        key, raw = pair.split("=", 1)
        key = key.strip()
        value = _parse_scalar(raw)
        if key.startswith("options."):
            out.setdefault("options", {})[key[len("options."):]] = value
        elif key in RUN_KEYS and key != "options":
            out[key] = value
        else:
            out.setdefault("options", {})[key] = value
    return out


def _parse_scalar(raw: str) -> Any:
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:  # not a YAML scalar: the raw text (the option's type check names it)
        return raw
    if isinstance(value, str):  # YAML reads 1e-4 as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def resolve_config(settings: dict[str, Any]) -> RunConfig:
    """Merge method defaults, the preset named in ``settings['preset']`` and ``settings``."""
    from dmlkit.engine.validate import method_options, nearest, validate_run
    from dmlkit.methods import method_class

    for key in settings:
        if key not in RUN_KEYS:
            raise ConfigError(f"unknown setting '{key}'{nearest(key, RUN_KEYS)}")
    preset = load_preset(settings["preset"]) if settings.get("preset") else {}
    merged: dict[str, Any] = {}
    method_name = settings.get("method") or preset.get("method") or RunConfig.method
    method_options(method_name, {})  # an unknown method: one line with the nearest name
    cls = method_class(method_name)
    for key in TRAINING_KEYS:
        if key in cls.defaults:
            merged[key] = cls.defaults[key]
    options = cls.current_option_names(preset.get("options") or {})  # deprecated names -> current ones
    options.update(cls.current_option_names(settings.get("options") or {}))
    for source in (preset, settings):
        for key, value in source.items():
            if key != "options" and value is not None:
                merged[key] = value
    merged["options"] = options
    merged["method"] = method_name
    config = RunConfig(**merged)
    validate_run(config)
    return config
