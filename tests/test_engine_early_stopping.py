"""Early stopping on a monitored metric (engine/stopping.py), the rule of GeDML's BaseManager (DRML)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dmlkit.engine.config import ConfigError, resolve_config
from dmlkit.engine.stopping import EarlyStopping

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def _stop_epoch(curve: list[float], patience: int, collapse: float | None = None, every: int = 1) -> int | None:
    rule = EarlyStopping("val_recall@1", patience, collapse)
    for i, value in enumerate(curve):
        if rule.update({"epoch": (i + 1) * every, "val_recall@1": value}):
            return (i + 1) * every
    return None


def test_patience_counts_epochs_without_a_strict_improvement():
    # best at epoch 3 (0.6); epoch 5 ties it (no improvement, as GeDML's '>' test); 15 epochs later: stop
    curve = [0.4, 0.5, 0.6, 0.58, 0.6] + [0.59] * 20
    assert _stop_epoch(curve, patience=15) == 3 + 15
    assert _stop_epoch(curve, patience=30) is None
    rising = [0.1 * i for i in range(1, 30)]
    assert _stop_epoch(rising, patience=2) is None  # improves every epoch: never stops


def test_an_improvement_resets_the_wait():
    curve = [0.5, 0.4, 0.4, 0.6, 0.4, 0.4, 0.4]
    assert _stop_epoch(curve, patience=3) == 7  # wait reset at epoch 4


def test_patience_is_in_epochs_when_evaluating_every_other_epoch():
    assert _stop_epoch([0.5, 0.4, 0.4], patience=4, every=2) == 6  # evaluated at 2, 4, 6: wait 2 + 2


def test_collapse_stops_at_the_fraction_of_the_best():
    curve = [0.5, 0.6, 0.37, 0.36]
    assert _stop_epoch(curve, patience=15, collapse=0.6) == 4  # 0.36 <= 0.6 x 0.6
    assert _stop_epoch(curve, patience=15) is None


def test_a_record_without_the_monitor_never_stops():
    rule = EarlyStopping("val_recall@1", 1)
    assert not any(rule.update({"epoch": e, "recall@1": 0.1}) for e in range(1, 10))


def test_bad_settings_are_config_errors():
    with pytest.raises(ValueError, match="early_stop_patience must be a positive integer"):
        EarlyStopping("val_recall@1", 0)
    with pytest.raises(ConfigError, match="needs early_stop_monitor"):
        resolve_config({"method": "supervised", "early_stop_patience": 3})
    with pytest.raises(ConfigError, match="early_stop_collapse must lie in"):
        resolve_config({"method": "drml", "early_stop_collapse": 1.5})
    assert resolve_config({"method": "supervised"}).early_stop_patience is None  # opt-in per method


@pytest.mark.skipif(not FMNIST.exists() and not os.environ.get("DMLKIT_DATA"), reason="Fashion-MNIST not installed")
def test_the_engine_stops_on_a_synthetic_validation_curve(tmp_path, monkeypatch):
    import dmlkit
    from dmlkit.engine.module import MethodModule

    curve = iter([0.50, 0.70, 0.65, 0.69, 0.70, 0.90])  # best at epoch 2; patience 3 -> stop after epoch 5

    def fake_evaluate(self, which="test"):
        value = next(curve) if which == "val" else 0.5
        return {"recall@1": value, "nmi": 0.5, "map@r": value / 2}

    monkeypatch.setattr(MethodModule, "evaluate_split", fake_evaluate)
    result = dmlkit.train("supervised", "fashion-mnist", str(tmp_path / "run"), train_subset=120, test_subset=100,
                          val_fraction=0.25, batch_size=30, epochs=6, threads=1, progress=False, pictures=False,
                          early_stop_patience=3, early_stop_monitor="val_recall@1",
                          options={"backbone": "mnist-net"})
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3, 4, 5]
    assert "did not improve on 0.7000 (epoch 2) for 3 epochs" in result["stopped_early"]
    assert result["best"]["epoch"] == 2 and result["best"]["selected_on"] == "validation recall@1"
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
