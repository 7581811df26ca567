"""Continuing a run: its saved recipe, located in the directory given (never the saved ``out``), with
the flags that may change applied and any other change refused by name.

Settings that may change on ``--resume`` (:data:`RESUMABLE`) concern where and how the run executes,
not what it learns; raising ``epochs`` extends the schedule: the cosine learning rate then follows the
schedule of the new length from the resume point on, ``lr_t = lr_0 (1 + cos(pi t / E')) / 2`` for the
new total ``E'`` (:class:`ExtendSchedule`). Any other setting that differs from the saved one is a
:class:`ConfigError` naming it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from dmlkit.engine.config import ConfigError, RunConfig
from dmlkit.engine.rundir import resolve_latest
from dmlkit.engine.validate import load_settings_yaml, validate_run

log = logging.getLogger("dmlkit")

#: run settings a resumed run may change (they do not change what the network learns)
RESUMABLE = ("epochs", "threads", "progress", "pictures", "picture_every", "data_root", "accelerator", "devices",
             "strategy", "on_nan", "num_workers", "eval_every", "quality_every", "out")
#: config.yaml sections that record the resolved run and are not settings
RECORD_KEYS = ("resolved", "versions")


def read_run_config(run_dir: Path) -> RunConfig:
    """The configuration saved in ``run_dir/config.yaml``, with ``out`` set to ``run_dir``."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no config.yaml in {run_dir}; pass a run directory written by `dmlkit train`")
    raw = load_settings_yaml(path, "run config", extra=RECORD_KEYS)
    for key in RECORD_KEYS:
        raw.pop(key, None)
    raw["out"] = str(run_dir)
    return RunConfig(**raw)


def trained_epochs(run_dir: Path) -> int:
    """Epochs completed by the last checkpoint (``checkpoints/latest.json``), 0 if none."""
    try:
        return int(json.loads((run_dir / "checkpoints" / "latest.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _flag(key: str, option: bool) -> str:
    return f"--set {key}=…" if option else f"--{key.replace('_', '-')}"


def resume_config(out: str | Path, settings: dict[str, Any] | None = None) -> RunConfig:
    """The saved run in ``out`` with ``settings`` applied where a resumed run may change them."""
    run_dir = resolve_latest(Path(out))
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {run_dir}/checkpoints/last.ckpt; start without --resume")
    config = read_run_config(run_dir)
    settings = dict(settings or {})
    saved_options = dict(config.options)
    for key, value in (settings.pop("options", None) or {}).items():
        if saved_options.get(key) != value:
            raise ConfigError(f"--resume cannot change method option {key} (saved {saved_options.get(key)!r}, given "
                              f"{value!r}); drop {_flag(key, True)}, or start a new run with another --out")
    for key, value in settings.items():
        saved = getattr(config, key, None)
        if key not in RESUMABLE and value != saved:
            raise ConfigError(f"--resume cannot change {key} (saved {saved!r}, given {value!r}); drop "
                              f"{_flag(key, False)}, or start a new run with another --out")
        setattr(config, key, value)
    config.out = str(run_dir)
    done = trained_epochs(run_dir)
    if config.epochs is not None and config.epochs < done:
        raise ConfigError(f"--epochs {config.epochs} is below the {done} epochs {run_dir} already trained; "
                          f"pass --epochs {done} or more")
    validate_run(config)
    return config


class ExtendSchedule(Callback):
    """After a resumed checkpoint is restored: a cosine schedule of another length than the run's
    ``epochs`` (``--resume --epochs E'``) becomes the cosine of length ``E'`` at the current epoch."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max != self.epochs:
                log.info("schedule: cosine over %d epochs instead of %d, from epoch %d on",
                         self.epochs, scheduler.T_max, scheduler.last_epoch)
                scheduler.T_max = self.epochs
                lrs = scheduler._get_closed_form_lr()
                for group, lr in zip(scheduler.optimizer.param_groups, lrs):
                    group["lr"] = lr
                scheduler._last_lr = list(lrs)
