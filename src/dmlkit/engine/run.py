"""One training run end to end: data, method, Lightning trainer, evaluation, run directory."""
from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from dmlkit.data.base import DMLDataset, SplitData
from dmlkit.engine.checkpoint import (
    AtomicCheckpointIO,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint_dict,
)
from dmlkit.engine.config import RunConfig, resolve_config
from dmlkit.engine.record import run_record
from dmlkit.engine.resume import ExtendSchedule, read_run_config, resume_config
from dmlkit.engine.rundir import (
    OUT_ENV,
    RunDirError,
    RunLock,
    check_out,
    default_out,
    interrupt_raises,
    is_rank_zero,
    point_latest,
    start_run_dir,
)
from dmlkit.engine.validate import check_machine
from dmlkit.methods import BuildInfo, Method, method_class

log = logging.getLogger("dmlkit")

LAST, BEST, POINTER = "last.ckpt", "best.ckpt", "latest.json"


def train(method: str | None = None, dataset: str | None = None, out: str | None = None, **settings: Any) -> dict:
    """Train one method, like ``dmlkit train``; returns the content of ``out/metrics.json``.

    Example::

        result = dmlkit.train("stml", "fashion-mnist", "runs/stml", epochs=2, train_subset=2000)
        result["test"]["recall@1"]

    ``out=None`` makes a new ``runs/<date>-<time>-<method>-<dataset>``; an existing non-empty ``out`` is
    refused unless ``resume=True`` (continue it) or ``overwrite=True`` (replace a dmlkit run there).
    """
    for key, value in (("method", method), ("dataset", dataset), ("out", out)):
        if value is not None:
            settings[key] = value
    overwrite = bool(settings.pop("overwrite", False))
    if settings.pop("resume", False):
        return run(resume_config(settings.pop("out", "runs/latest"), settings), resume=True)
    return run(resolve_config(settings), overwrite=overwrite)


def prepare_data(config: RunConfig, uses_labels: str) -> SplitData:
    """Records -> protocol split -> optional subsets -> labels a method may see."""
    from dmlkit.data import load_records
    from dmlkit.data.splits import make_split, stratified_subset

    records = load_records(config.dataset, config.data_root)
    split = make_split(records, protocol=config.protocol, labels_per_class=config.labels_per_class,
                       seed=config.seed, fold=config.fold, val_fraction=config.val_fraction)
    train_set, query = split.train, split.query
    if config.train_subset and config.train_subset < len(train_set):
        if uses_labels == "none":  # label-free methods never read labels, not even to draw a subset
            rng = np.random.default_rng(config.seed)
            train_set = train_set.subset(np.sort(rng.choice(len(train_set), config.train_subset, replace=False)))
        elif uses_labels == "partial":  # keep every labeled item; subsample the unlabeled pool
            labeled = np.flatnonzero(train_set.labels >= 0)
            unlabeled = np.flatnonzero(train_set.labels < 0)
            if len(unlabeled) and config.train_subset <= len(labeled):
                raise ValueError(f"train_subset={config.train_subset} keeps all {len(labeled)} labeled items and leaves "
                                 f"no room for unlabeled ones; raise --train-subset above {len(labeled)}")
            keep = config.train_subset - len(labeled)
            rng = np.random.default_rng(config.seed)
            chosen = rng.choice(unlabeled, min(keep, len(unlabeled)), replace=False)
            train_set = train_set.subset(np.sort(np.concatenate([labeled, chosen])))
        else:
            train_set = stratified_subset(train_set, config.train_subset, seed=config.seed)
    if config.test_subset and config.test_subset < len(query) and split.gallery is None:
        # seeded apart from the run: runs with different seeds (MLRC folds, repeats) share one test set
        query = stratified_subset(query, config.test_subset, seed=0)
    train_set = visible_labels(train_set, uses_labels)
    return SplitData(train=train_set, query=query, gallery=split.gallery, val=split.val, info=split.info)


def visible_labels(dataset: DMLDataset, uses_labels: str) -> DMLDataset:
    """Hide labels a method must not read: all of them for label-free methods; supervised methods
    train on the labeled items only."""
    if uses_labels == "none":
        return dataset.with_labels(np.full(len(dataset), -1, dtype=np.int64))
    if uses_labels == "all":
        labeled = np.flatnonzero(dataset.labels >= 0)
        if len(labeled) == 0:
            raise ValueError(f"{dataset.name}: a supervised method needs labels, but every training item is unlabeled")
        return dataset if len(labeled) == len(dataset) else dataset.subset(labeled)
    if not (dataset.labels >= 0).any():
        raise ValueError(f"{dataset.name}: a semi-supervised method needs some labels; pass --labels-per-class N")
    return dataset


def build_method(config: RunConfig, train_set: DMLDataset) -> Method:
    cls = method_class(config.method)
    from dmlkit.data.views import preset_for

    visible = train_set.labels[train_set.labels >= 0]
    info = BuildInfo(channels=train_set.channels, image_size=train_set.image_size, num_train=len(train_set),
                     num_classes=len(np.unique(visible)), dataset=config.dataset,
                     views_preset=preset_for(train_set), augmentations=train_set.augmentations,
                     view_strength=config.view_strength)
    method = cls.from_options(dict(config.options), info)
    if _runs_on_cpu(config):
        # oneDNN convolutions run 1.2-1.9x faster on channels-last weights (mnist-net, cifar-net, ResNet-18;
        # forward + backward, one thread): the layout changes speed, not the arithmetic's meaning
        method.to(memory_format=torch.channels_last)
    return method


def _runs_on_cpu(config: RunConfig) -> bool:
    return config.accelerator == "cpu" or (config.accelerator == "auto" and not torch.cuda.is_available())


def _settings(config: RunConfig) -> dict[str, Any]:
    return {"batch_size": config.batch_size, "seed": config.seed, "num_workers": config.num_workers,
            "lr": config.lr, "weight_decay": config.weight_decay or 0.0, "optimizer": config.optimizer,
            "scheduler": config.scheduler, "epochs": config.epochs, "eval_every": config.eval_every,
            "on_nan": config.on_nan, "run_dir": config.out, "early_stop_patience": config.early_stop_patience,
            "early_stop_monitor": config.early_stop_monitor, "early_stop_collapse": config.early_stop_collapse,
            "picture_every": config.picture_every if config.pictures else None,
            "quality_every": config.quality_every, "quality_items": config.quality_items}


def run(config: RunConfig, resume: bool | str = False, overwrite: bool = False) -> dict:
    """Train ``config`` and write its run directory; returns the metrics.json content.

    Everything is checked before the first file is written: the settings, the data, the method's
    options and the run directory (:func:`dmlkit.engine.rundir.check_out`).
    """
    start = time.perf_counter()
    defaulted = not config.out
    out = default_out(config.method, config.dataset) if defaulted else Path(config.out)
    config.out = str(out)
    if defaulted and config.devices > 1:  # DDP workers re-run the command line: they must find the same folder
        os.environ[OUT_ENV] = str(out)
    rank_zero = is_rank_zero()
    if rank_zero:
        check_out(out, resume=bool(resume), overwrite=overwrite)
    check_machine(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    cls = method_class(config.method)
    if cls.trains:  # before any process starts or the run directory is touched
        cls.check_world_size(config.devices)
    import lightning as L

    L.seed_everything(config.seed, workers=True, verbose=False)
    data = prepare_data(config, cls.uses_labels)
    method = build_method(config, data.train)
    if cls.trains and len(data.train) < config.batch_size and cls.uses_labels != "partial":
        raise ValueError(f"the training split has {len(data.train)} items, fewer than one batch of {config.batch_size}; "
                         "lower --batch-size or use more data")
    if not rank_zero:  # a DDP worker: rank 0 owns the directory
        return _fit(config, method, data, out, _resume_path(out, resume, clean=False), start)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"--out {out}: cannot create the directory ({error.strerror}); pass a writable --out") from None
    log.info("run directory: %s", out)
    with RunLock(out):
        resume_path = _resume_path(out, resume)
        if resume_path is None:
            start_run_dir(out, overwrite=overwrite)
        if defaulted:
            point_latest(out)
        record = run_record(config, method, data.train)
        atomic_write_bytes(out / "config.yaml", yaml.safe_dump(record, sort_keys=False, allow_unicode=True).encode())
        return _fit(config, method, data, out, resume_path, start)


def _fit(config: RunConfig, method: Method, data: SplitData, out: Path, resume_path: Path | None,
         start: float) -> dict:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from dmlkit.engine.module import MethodModule, NonFiniteLossError

    checkpoint_dir = out / "checkpoints"
    module = MethodModule(method, data.train, data.query, data.gallery, data.val, _settings(config),
                          data.query.recall_at)
    if not method_class(config.method).trains:
        module.history.append({"epoch": 0, "epoch_seconds": 0.0, "images_per_second": 0.0,
                               **module.evaluate_split("test")})
        if is_rank_zero():  # a checkpoint of the untrained network, so `dmlkit eval/embed` work on it too
            atomic_torch_save({"state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
                               "dmlkit": {"history": module.history, "method_state": method.extra_state_for_checkpoint()}},
                              checkpoint_dir / LAST)
        return _finish(module, config, out, time.perf_counter() - start)
    module.checkpoint_hook = lambda trainer, record: _save_checkpoints(trainer, module, checkpoint_dir, record, config)
    strategy: Any = config.strategy
    if strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="gloo" if config.accelerator == "cpu" else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available but not used.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode at the start of training.*")  # EMA teachers
        warnings.filterwarnings("ignore", ".*logs directory .* exists and is not empty.*")  # resume appends
        trainer = L.Trainer(
            max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices, strategy=strategy,
            logger=[CSVLogger(out, name="logs", version=""), TensorBoardLogger(out, name="logs", version="tb")],
            plugins=[AtomicCheckpointIO()], enable_checkpointing=False, enable_progress_bar=config.progress,
            enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0,
            limit_val_batches=0, log_every_n_steps=10, deterministic=False, callbacks=[ExtendSchedule(config.epochs)],
        )
        try:
            with interrupt_raises(out, lambda: (trainer.current_epoch + 1, trainer.global_step)):
                trainer.fit(module, ckpt_path=str(resume_path) if resume_path else None, weights_only=True)
        except NonFiniteLossError as error:
            error.run_dir = out  # the CLI names the last good checkpoint in it
            raise
    if trainer.global_rank != 0:
        return {}
    return _finish(module, config, out, time.perf_counter() - start)


def _resume_path(out: Path, resume: bool | str, clean: bool = True) -> Path | None:
    if not resume:
        return None
    path = Path(resume) if isinstance(resume, str) else out / "checkpoints" / LAST
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint at {path}; start without --resume")
    if clean:  # rank 0, before it writes anything: a checkpoint that cannot be trusted stops here
        load_checkpoint_dict(path)
        for leftover in path.parent.glob(".*.tmp"):  # a write a kill interrupted; the renamed file is intact
            leftover.unlink()
    return path


def _save_checkpoints(trainer, module, checkpoint_dir: Path, record: dict, config: RunConfig) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(checkpoint_dir / LAST, weights_only=False)  # full state, for --resume
    key = selection_key(record, config.early_stop_monitor)
    if key in record:
        scored = [r for r in module.history if key in r]
        if record[key] >= max(r[key] for r in scored):
            trainer.save_checkpoint(checkpoint_dir / BEST, weights_only=False)
    if trainer.global_rank == 0:
        atomic_write_json(checkpoint_dir / POINTER, {"last": LAST, "epoch": record["epoch"], "complete": True})


def selection_key(record: dict, monitor: str | None) -> str:
    """The record key the best epoch is chosen on: the early-stopping monitor when the record has it,
    else validation MAP@R (MLRC), else test R@1 (best-on-test, labelled as such)."""
    if monitor and monitor in record:
        return monitor
    return "val_map@r" if "val_map@r" in record else "recall@1"


def _finish(module, config: RunConfig, out: Path, seconds: float) -> dict:
    history = module.history
    evaluated = [r for r in history if "recall@1" in r]
    metric_keys = [k for k in evaluated[-1] if k not in ("epoch", "epoch_seconds", "images_per_second", "stopped_early")
                   and not k.startswith(("val_", "quality/"))]
    test = {k: evaluated[-1][k] for k in metric_keys}
    select_key = selection_key(evaluated[-1], config.early_stop_monitor)
    best = max(evaluated, key=lambda r: r[select_key])
    speeds = [r["images_per_second"] for r in history if "images_per_second" in r]  # not quality's epoch 0
    selected_on = (f"validation {select_key[len('val_'):]}" if select_key.startswith("val_")
                   else f"test {select_key} (best-on-test, for reproduction only)")
    result = {
        "method": config.method, "dataset": config.dataset, "protocol": config.protocol,
        "test": test,
        "best": {"epoch": best["epoch"], "selected_on": selected_on, **{k: best[k] for k in metric_keys}},
        "stopped_early": history[-1].get("stopped_early") if history else None,
        "seconds": seconds,
        "images_per_second": float(np.mean(speeds)) if speeds else 0.0,
        "skipped_batches": module.skipped_batches,
        "history": history,
        "config": config.to_dict(),
    }
    if config.pictures:
        result["pictures"] = _pictures(module, out, config)
    atomic_write_json(out / "metrics.json", result)
    _report(out, result)
    return result


def _pictures(module, out: Path, config: RunConfig) -> list[str]:
    from dmlkit import viz

    pictures_dir = out / "pictures"
    pictures_dir.mkdir(exist_ok=True)
    query = module.query
    embeddings = module.embed(query).numpy()
    made = []
    try:
        names = query.class_names
        viz.embedding_map(embeddings, query.true_labels, pictures_dir / "embedding_map.png", seed=config.seed,
                          class_names=names)
        made.append("pictures/embedding_map.png")
        images = np.stack([query.image(i).numpy() for i in range(min(len(query), 4000))])
        viz.retrieval_grid(images, embeddings[: len(images)], query.true_labels[: len(images)],
                           pictures_dir / "retrieval_grid.png", seed=config.seed, class_names=names)
        made.append("pictures/retrieval_grid.png")
        viz.metric_curves(module.history, pictures_dir / "metric_curves.png")
        made.append("pictures/metric_curves.png")
        if _similarity_grid(module, pictures_dir / "similarity_grid.png", config):
            made.append("pictures/similarity_grid.png")
    except Exception as error:  # pictures never sink a finished run
        log.warning("pictures: %s", error)
    return made


def _similarity_grid(module, path: Path, config: RunConfig) -> bool:
    """Top-8 by the method's pseudo-similarity in one training batch (STML supplement, Fig. 2)."""
    from dmlkit import viz

    train = module.train_set
    batch = next(iter(module.method.batch_sampler(train, min(config.batch_size, len(train)), config.seed, 0)), None)
    if batch is None:
        return False
    batch = np.asarray(list(batch)[: config.batch_size])
    images = torch.stack([train.image(int(i)) for i in batch])
    similarity = module.method.pseudo_similarity(images.to(module.device))
    if similarity is None:
        return False
    # ground truth only colours the borders of the picture; training never read it
    viz.similarity_grid(images.numpy(), similarity.cpu(), path, labels=train.true_labels[batch], seed=config.seed,
                        class_names=train.class_names)
    return True


def _report(out: Path, result: dict) -> None:
    from dmlkit.viz import write_report

    try:
        write_report(out, result["test"], result["history"], result.get("pictures", []))
    except Exception as error:
        log.warning("report: %s", error)


def load_run(path: str | Path) -> tuple[RunConfig, Method, dict]:
    """A trained method from a run directory or checkpoint file: ``(config, method, checkpoint)``.

    The checkpoint is read with weights-only loading; the config comes from the run's config.yaml.
    """
    path = Path(path)
    ckpt_path = path / "checkpoints" / LAST if path.is_dir() else path
    run_dir = ckpt_path.parent.parent
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"no config.yaml beside {ckpt_path}; pass a run directory written by `dmlkit train`")
    checkpoint = load_checkpoint_dict(ckpt_path)
    config = read_run_config(run_dir)
    cls = method_class(config.method)
    data = prepare_data(config, cls.uses_labels)
    method = build_method(config, data.train)
    state = {k[len("method."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("method.")}
    method.load_state_dict(state)
    method.load_extra_state_from_checkpoint(checkpoint.get("dmlkit", {}).get("method_state", {}))
    method.eval()
    return config, method, checkpoint
