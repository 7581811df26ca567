"""Every setting checked before anything is written: types from the config dataclasses, ranges, choices.

Each failure is a :class:`ConfigError` whose one line names the setting, the bad value and what is
allowed. A bool is not an int (``--set epochs=true`` is refused); an int is a float; NaN is never a
number here. Unknown names suggest the nearest valid one (:func:`difflib.get_close_matches`).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from dmlkit.engine.config import RUN_KEYS, ConfigError, RunConfig

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
#: allowed values of the run's string settings (None: any string)
CHOICES: dict[str, tuple[str, ...]] = {
    "protocol": ("standard", "zero-shot"), "on_nan": ("stop", "skip"), "strategy": ("auto", "ddp"),
    "accelerator": ("auto", "cpu", "gpu", "cuda"),
}
#: smallest allowed value of numeric run settings (inclusive)
MINIMUM: dict[str, float] = {"epochs": 1, "batch_size": 1, "eval_every": 1, "devices": 1, "threads": 1,
                             "labels_per_class": 1, "train_subset": 1, "test_subset": 1, "picture_every": 1,
                             "num_workers": 0, "seed": 0, "weight_decay": 0.0, "fold": 0,
                             "view_strength": 0.0, "quality_every": 0, "quality_items": 2}


def nearest(name: str, valid: typing.Iterable[str]) -> str:
    """``"; did you mean 'sigma'?"`` for the closest valid name, or ``""``."""
    match = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _allowed(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for arg in typing.get_args(hint) for t in _allowed(arg))
    origin = typing.get_origin(hint)
    return (origin,) if origin is not None else (hint,)


def check_type(what: str, value: Any, hint: Any) -> None:
    """ConfigError unless ``value`` fits ``hint`` (bool is not int; int is float; NaN is refused)."""
    allowed = _allowed(hint)
    if Any in allowed:
        return
    ok = any(
        value is None if t is type(None)
        else isinstance(value, bool) if t is bool
        else isinstance(value, int) and not isinstance(value, bool) if t is int
        else isinstance(value, (int, float)) and not isinstance(value, bool) if t is float
        else isinstance(value, (list, tuple)) if t in (list, tuple)
        else isinstance(value, t)
        for t in allowed)
    if not ok:
        words = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in allowed)
        raise ConfigError(f"{what} must be {words}, got {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"{what} must be a number, got nan")


def validate_run(config: RunConfig) -> None:
    """Types and ranges of the run settings, then the method's options (before any file is written)."""
    hints = typing.get_type_hints(RunConfig)
    for field in dataclasses.fields(RunConfig):
        value = getattr(config, field.name)
        if field.name == "options":
            if not isinstance(value, dict):
                raise ConfigError(f"options must be a mapping of method options, got {value!r}")
            continue
        check_type(f"setting {field.name}", value, hints[field.name])
        if value is None:
            continue
        if field.name in CHOICES and value not in CHOICES[field.name]:
            raise ConfigError(f"{field.name} '{value}' is not one of {', '.join(CHOICES[field.name])}")
        if field.name in MINIMUM and value < MINIMUM[field.name]:
            raise ConfigError(f"{field.name} must be at least {MINIMUM[field.name]:g}, got {value!r}")
    _check_numbers(config)
    _check_training(config)
    method_options(config.method, config.options)


def _check_numbers(config: RunConfig) -> None:
    if config.lr is not None and not (math.isfinite(config.lr) and config.lr >= 0):
        raise ConfigError(f"lr must be a finite learning rate >= 0 (e.g. 1e-4), got {config.lr!r}")
    if not math.isfinite(config.view_strength):
        raise ConfigError(f"view_strength must be a finite number >= 0 (1 = the views preset, 0 = no augmentation), "
                          f"got {config.view_strength!r}")
    if config.weight_decay is not None and not math.isfinite(config.weight_decay):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {config.weight_decay!r}")
    if not 0.0 <= config.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie in [0, 1), got {config.val_fraction!r}")
    if config.fold is not None and config.fold > 3:
        raise ConfigError(f"fold must be 0, 1, 2 or 3 (the MLRC folds), got {config.fold}")
    patience = config.early_stop_patience
    if patience is not None and patience < 0:
        raise ConfigError(f"early_stop_patience must be a non-negative integer (0 = off), got {patience!r}")
    if patience and not config.early_stop_monitor:
        raise ConfigError("early_stop_patience needs early_stop_monitor, e.g. --set early_stop_monitor=val_recall@1")
    if config.early_stop_collapse is not None and not 0.0 <= config.early_stop_collapse < 1.0:
        raise ConfigError(f"early_stop_collapse must lie in [0, 1), got {config.early_stop_collapse!r}")


def _check_training(config: RunConfig) -> None:
    from dmlkit.models.optim import OPTIMIZERS, SCHEDULERS

    if config.optimizer is not None and config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer '{config.optimizer}' is not one of {', '.join(OPTIMIZERS)}"
                          f"{nearest(config.optimizer, OPTIMIZERS)}")
    if config.scheduler is not None and config.scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler '{config.scheduler}' is not one of {', '.join(SCHEDULERS)}"
                          f"{nearest(config.scheduler, SCHEDULERS)}")


def check_machine(config: RunConfig) -> None:
    """What this machine must offer the run (checked when it starts, not when it is configured)."""
    if config.accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--accelerator {config.accelerator}: no GPU is visible on this machine "
                              "(torch.cuda.is_available() is False); use --accelerator cpu or auto")
        if config.devices > torch.cuda.device_count():
            raise ConfigError(f"--devices {config.devices}: only {torch.cuda.device_count()} GPU(s) are visible")


def method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``method``, the given ones checked and the rest filled with their defaults."""
    from dmlkit.methods import method_class

    try:
        cls = method_class(method)
    except KeyError as error:
        raise ConfigError(f"{error.args[0]}{nearest(method, _method_names())}") from None
    if cls.Config is None:
        if options:
            raise ConfigError(f"method '{method}' takes no options, got: {', '.join(options)}")
        return {}
    hints = typing.get_type_hints(cls.Config)
    options = cls.current_option_names(options)  # an old run's config.yaml may use deprecated names
    for key, value in options.items():
        if key not in hints:
            raise ConfigError(f"method '{method}' has no option '{key}'{nearest(key, set(hints) | RUN_KEYS)} "
                              f"(`dmlkit options {method}` lists them)")
        check_type(f"option {key} of method {method}", value, hints[key])
    try:
        resolved = cls.Config(**options)  # the dataclass's own range checks (__post_init__)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"method '{method}': {error}") from None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(resolved).items()}


def _method_names() -> list[str]:
    from dmlkit.methods import REGISTRY

    return list(REGISTRY)


def load_settings_yaml(path: Path, what: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML mapping of run settings, read with the safe loader and checked against :class:`RunConfig`
    (keys in ``extra`` are allowed too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{what} {path}: {where}{problem}; only plain YAML values are allowed") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a YAML mapping of settings (key: value), "
                          f"got a {type(data).__name__} at the top")
    for key in data:
        if key not in RUN_KEYS and key not in extra:
            raise ConfigError(f"{what} {path}: unknown setting '{key}'{nearest(str(key), RUN_KEYS)}")
    if data.get("options") is not None and not isinstance(data["options"], dict):
        raise ConfigError(f"{what} {path}: options must be a mapping of method options")
    return data
