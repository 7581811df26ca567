"""Early stopping on a monitored metric (generic; a method opts in through its ``defaults``).

Rule (zbr17/GeDML ``src/gedml/launcher/managers/base_manager.py`` L294-299, L348-358, DRML's trainer)::

    after every evaluation: value > best  ->  best = value, wait = 0
                            otherwise     ->  wait += epochs since the last evaluation
    stop when wait >= patience, or when value <= collapse · best (a collapsed run)

``patience`` is in epochs; the metric is larger-is-better (R@1, MAP@R). An evaluation record without
the monitored key (no validation split) never stops the run.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """Patience (and optional collapse) rule on one larger-is-better metric.

    Args:
        monitor: key of the evaluation record, e.g. ``"val_recall@1"``.
        patience: epochs without a strict improvement before stopping (>= 1).
        collapse: stop when the value falls to ``collapse`` times the best or below; None = off.
    """

    monitor: str
    patience: int
    collapse: float | None = None
    best: float = float("-inf")
    best_epoch: int = 0
    wait: int = 0
    last_epoch: int = 0
    reason: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"early_stop_patience must be a positive integer, got {self.patience!r}")
        if self.collapse is not None and not 0.0 <= self.collapse < 1.0:
            raise ValueError(f"early_stop_collapse must lie in [0, 1), got {self.collapse!r}")

    def update(self, record: dict) -> bool:
        """Feed one epoch's record (``epoch`` counted from 1); True when training should stop now."""
        if self.monitor not in record:
            return False
        epoch, value = int(record["epoch"]), float(record[self.monitor])
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
        else:
            self.wait += epoch - self.last_epoch
        self.last_epoch = epoch
        if self.wait >= self.patience:
            self.reason = f"{self.monitor} did not improve on {self.best:.4f} (epoch {self.best_epoch}) for {self.wait} epochs"
        elif self.collapse is not None and self.best > 0 and value <= self.collapse * self.best:
            self.reason = f"{self.monitor} {value:.4f} fell to <= {self.collapse} x best {self.best:.4f} (collapsed)"
        return self.reason is not None


__all__ = ["EarlyStopping"]
