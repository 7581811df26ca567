"""The one training loop: a LightningModule that drives any :class:`dmlkit.methods.Method`."""
from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from dmlkit.data.base import DMLDataset
from dmlkit.data.seeding import seeded_generator
from dmlkit.evaluation.embedding import embed_dataset, embed_dataset_distributed
from dmlkit.evaluation.knn import refresh_knn
from dmlkit.methods.base import Method, RefreshContext

log = logging.getLogger("dmlkit")


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite loss; the CLI exits with code 3."""


class EpochBatchSampler:
    """Asks the method for a fresh batch list every epoch (neighbour tables change), and gives each
    distributed rank its slice of every global batch."""

    def __init__(self, method: Method, dataset: DMLDataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} does not split over {world_size} processes; use a multiple")
        self.method, self.dataset, self.batch_size, self.seed = method, dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        share = self.batch_size // self.world_size
        for batch in self.method.batch_sampler(self.dataset, self.batch_size, self.seed, self.epoch):
            batch = list(batch)
            yield batch[self.rank * share:(self.rank + 1) * share] if self.world_size > 1 else batch

    def __len__(self) -> int:
        try:
            return len(self.method.batch_sampler(self.dataset, self.batch_size, self.seed, self.epoch))
        except Exception:
            return max(1, len(self.dataset) // self.batch_size)


def _collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }


class MethodModule(L.LightningModule):
    """Lightning wrapper: refresh at epoch start, loss, hooks around the optimizer step, evaluation."""

    def __init__(self, method: Method, train_set: DMLDataset, query: DMLDataset, gallery: DMLDataset | None,
                 val: DMLDataset | None, settings: dict[str, Any], recall_at: tuple[int, ...]):
        super().__init__()
        self.method = method
        self.train_set, self.query, self.gallery, self.val = train_set, query, gallery, val
        self.settings = settings
        self.recall_at = recall_at
        self.history: list[dict[str, Any]] = []
        self.batch_sampler: EpochBatchSampler | None = None
        self.skipped_batches = 0
        self._epoch_start = 0.0
        self._images_seen = 0
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._loss_items = 0
        self.checkpoint_hook = None
        self.stopper = None
        self.quality_monitor = None

    # -- data ---------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.batch_sampler = EpochBatchSampler(
            self.method, self.train_set, self.settings["batch_size"], self.settings["seed"],
            self.global_rank, self.trainer.world_size,
        )
        return DataLoader(self.train_set, batch_sampler=self.batch_sampler, collate_fn=_collate,
                          num_workers=self.settings["num_workers"])

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        from dmlkit.models.optim import build_optimizer, build_scheduler

        s = self.settings
        groups = self.method.parameter_groups(s["lr"], s["weight_decay"])
        optimizer = build_optimizer(s["optimizer"], groups, lr=s["lr"], weight_decay=s["weight_decay"])
        scheduler = build_scheduler(s["scheduler"], optimizer, epochs=s["epochs"], delay=self.method.scheduler_delay())
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- the loop -----------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        if epoch == 0 and not self.history and self.settings.get("quality_every"):
            start: dict[str, Any] = {"epoch": 0}  # the pseudo-supervision before any training
            self._record_quality(start)
            self.history.append(start)
        torch.manual_seed(int(seeded_generator(self.settings["seed"], epoch, self.global_rank).initial_seed()))
        np.random.seed(int(seeded_generator(self.settings["seed"], epoch, 7).initial_seed()) % 2**32)
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch)
        context = RefreshContext(
            epoch=epoch, train=self.train_set, embed=self._embed_for_refresh, knn=refresh_knn,
            device=self.device, seed=self.settings["seed"], rank=self.global_rank, world_size=self.trainer.world_size,
            extra={"epochs": self.settings["epochs"]},
            keeps_artifacts=bool(self.settings.get("run_dir")) and self.global_rank == 0,
        )
        self._sync_buffers_from_rank_zero()
        phase = self.method.phase()
        self.method.refresh(context)
        self._after_refresh(phase)
        self.method.train()
        self._epoch_start = time.perf_counter()
        self._images_seen = 0
        self._loss_sums: dict[str, torch.Tensor] = {}
        self._loss_items = 0

    def _after_refresh(self, phase_before: str) -> None:
        """Log a change of the method's phase; write the artifacts it asked for (rank 0, with a run directory)."""
        from dmlkit.engine.artifacts import write_artifacts

        if self.method.phase() != phase_before and self.global_rank == 0:
            log.info("epoch %d: %s phase begins (after %s)", self.current_epoch + 1, self.method.phase(), phase_before)
        artifacts = self.method.take_artifacts()
        if artifacts and self.settings.get("run_dir") and self.global_rank == 0:
            write_artifacts(artifacts, self.settings["run_dir"])

    def _embed_for_refresh(self, fn, dataset: DMLDataset | None = None) -> torch.Tensor:
        """The split embedded once over all ranks: each rank embeds its shard, every rank gets all of it
        in item order (:func:`embed_dataset_distributed`; one process: :func:`embed_dataset`)."""
        dataset = dataset if dataset is not None else self.train_set
        return embed_dataset_distributed(fn, dataset, self.device, modules=(self.method,))

    def _sync_buffers_from_rank_zero(self) -> None:
        """Give every rank rank 0's buffers (BN statistics, EMA teachers' statistics ...).

        DDP broadcasts them at the start of every forward, so after an epoch's last forward each rank
        holds the statistics of its own last half batch. Refresh and evaluation run in eval mode on
        those buffers: syncing first makes every rank embed, and score, with one model (and so take the
        same best-checkpoint decision, whose save is a collective)."""
        import torch.distributed as dist

        if self.trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return
        for buffer in self.buffers():
            dist.broadcast(buffer.data, src=0)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        # Randomness (views, dropout) is a function of (seed, epoch, step, rank) alone, so a resumed
        # run draws exactly what an uninterrupted one draws.
        torch.manual_seed(int(seeded_generator(self.settings["seed"], self.current_epoch, batch_idx,
                                               self.global_rank).initial_seed()))
        losses = self.method.training_loss(batch)
        bad = [key for key, value in losses.items() if not torch.isfinite(value).all()]
        if bad:
            message = (f"non-finite loss at epoch {self.current_epoch}, step {self.global_step} "
                       f"(method {self.method.name}, term '{bad[0]}' = {losses[bad[0]].detach().flatten()[0].item()})")
            if self.settings["on_nan"] == "skip":
                log.warning("%s: batch skipped", message)
                self.skipped_batches += 1
                return None
            raise NonFiniteLossError(message)
        self._images_seen += len(batch["index"])
        self._log_losses({key: value.detach() for key, value in losses.items()}, len(batch["index"]))
        return losses["loss"]

    def _log_losses(self, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        """``train/<term>_step`` on the steps Lightning writes to the loggers (every ``log_every_n_steps``)
        and ``train/<term>_epoch`` (batch-size weighted mean) at the epoch's end: the rows Lightning's
        ``on_step=True, on_epoch=True`` writes, without its per-step bookkeeping (~2% of a small
        net's step on CPU, experiments/train_overhead.py)."""
        for key, value in losses.items():
            self._loss_sums[key] = self._loss_sums.get(key, 0.0) + value * batch_size
        self._loss_items += batch_size
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log_dict({f"train/{key}_step": value for key, value in losses.items()},
                          on_step=True, on_epoch=False, batch_size=batch_size)
        if self.trainer.progress_bar_callback is not None:
            self.log("loss", losses["loss"], prog_bar=True, on_step=True, on_epoch=False, logger=False)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.method.before_optimizer_step()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.method.after_step()

    def on_train_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._epoch_start
        record: dict[str, Any] = {"epoch": self.current_epoch + 1, "epoch_seconds": seconds,
                                  "images_per_second": self._images_seen / max(seconds, 1e-9)}
        if self._loss_items:
            self.log_dict({f"train/{key}_epoch": total / self._loss_items for key, total in self._loss_sums.items()},
                          on_step=False, on_epoch=True)
        epochs = self.settings["epochs"]
        if (self.current_epoch + 1) % self.settings["eval_every"] == 0 or self.current_epoch + 1 == epochs:
            self._sync_buffers_from_rank_zero()
            record.update(self.evaluate_split("test"))
            if self.val is not None:
                record.update({f"val_{k}": v for k, v in self.evaluate_split("val").items()})
            for key in ("recall@1", "nmi", "map@r"):
                if key in record:
                    self.log(f"test/{key}", float(record[key]), sync_dist=False)
            every = self.settings.get("picture_every")
            if every and (self.current_epoch + 1) % every == 0 and self.global_rank == 0:
                self._embedding_map_of_epoch(self.current_epoch + 1)
        quality_every = self.settings.get("quality_every")
        if quality_every and ((self.current_epoch + 1) % quality_every == 0 or self.current_epoch + 1 == epochs):
            self._record_quality(record)
        self.history.append(record)
        if self.checkpoint_hook is not None:
            self.checkpoint_hook(self.trainer, record)
        self._maybe_stop_early(record)
        if self.global_rank == 0 and "recall@1" in record:
            log.info("epoch %d: R@1 %.4f NMI %.4f MAP@R %.4f (%.1fs, %.0f img/s)", record["epoch"],
                     record["recall@1"], record["nmi"], record["map@r"], seconds, record["images_per_second"])

    def _record_quality(self, record: dict[str, Any]) -> None:
        """Add ``quality/<estimator>/<metric>`` of the method's pseudo-supervision on the fixed training
        subset to ``record`` (:mod:`dmlkit.engine.quality_monitor`); every rank measures the same."""
        from dmlkit.engine.quality_monitor import QualityMonitor, quality_summary

        if self.quality_monitor is None:
            s = self.settings
            self.quality_monitor = QualityMonitor(self.train_set, s["quality_items"], s["seed"])
        self._sync_buffers_from_rank_zero()
        values = self.quality_monitor.measure(self.method, self.device)
        record.update(values)
        self.log_dict(values, on_step=False, on_epoch=True, sync_dist=False)
        if self.global_rank == 0 and values:
            log.info("epoch %d quality: %s", record["epoch"], quality_summary(values))

    def _maybe_stop_early(self, record: dict[str, Any]) -> None:
        """Patience on ``early_stop_monitor`` (:class:`dmlkit.engine.stopping.EarlyStopping`); the
        rule is rebuilt from the history on the first call, so a resumed run keeps counting."""
        from dmlkit.engine.stopping import EarlyStopping

        patience, monitor = self.settings.get("early_stop_patience"), self.settings.get("early_stop_monitor")
        if not patience or not monitor:
            return
        if self.stopper is None:
            self.stopper = EarlyStopping(monitor, patience, self.settings.get("early_stop_collapse"))
            for past in self.history[:-1]:
                self.stopper.update(past)
            if monitor not in record and self.global_rank == 0:
                log.warning("early stopping on '%s' is inactive: the evaluation has no such key (a val_* metric "
                            "needs a validation split: --val-fraction or --fold)", monitor)
        if self.stopper.update(record):
            record["stopped_early"] = self.stopper.reason
            if self.global_rank == 0:
                log.info("early stop after epoch %d: %s", record["epoch"], self.stopper.reason)
            self.trainer.should_stop = True

    def _embedding_map_of_epoch(self, epoch: int) -> None:
        """``pictures/embedding_map_epoch<E>.png``: the test embeddings' t-SNE map during training."""
        from pathlib import Path

        from dmlkit import viz

        folder = Path(self.settings["run_dir"]) / "pictures"
        folder.mkdir(parents=True, exist_ok=True)
        viz.embedding_map(self.embed(self.query).numpy(), self.query.true_labels,
                          folder / f"embedding_map_epoch{epoch}.png", seed=self.settings["seed"], title=f"epoch {epoch}",
                          class_names=self.query.class_names)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate_split(self, which: str = "test") -> dict[str, float]:
        from dmlkit.evaluation import evaluate

        if which == "val":
            embeddings = self.embed(self.val)
            return _floats(evaluate(embeddings, self.val.true_labels, recall_at=self.recall_at,
                                    seed=self.settings["seed"]))
        query = self.embed(self.query)
        if self.gallery is None:
            return _floats(evaluate(query, self.query.true_labels, recall_at=self.recall_at, seed=self.settings["seed"]))
        gallery = self.embed(self.gallery)
        return _floats(evaluate(gallery, self.gallery.true_labels, recall_at=self.recall_at,
                                query_embeddings=query, query_labels=self.query.true_labels,
                                seed=self.settings["seed"]))

    def embed(self, dataset: DMLDataset) -> torch.Tensor:
        return embed_dataset(self.method.embed, dataset, self.device, modules=(self.method,))

    # -- checkpoint extras --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dmlkit"] = {"history": self.history, "method_state": self.method.extra_state_for_checkpoint(),
                                "skipped_batches": self.skipped_batches}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("dmlkit", {})
        self.history = list(extra.get("history", []))
        self.skipped_batches = int(extra.get("skipped_batches", 0))
        self.method.load_extra_state_from_checkpoint(extra.get("method_state", {}))


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()}
