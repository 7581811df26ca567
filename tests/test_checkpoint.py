"""Atomic writes and weights-only checkpoint loading (a crafted pickle never runs)."""
import os
import pickle

import pytest
import torch

from dmlkit.engine.checkpoint import AtomicCheckpointIO, CheckpointError, atomic_write_json, safe_torch_load


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    atomic_write_json(tmp_path / "m.json", {"a": 2})
    assert (tmp_path / "m.json").read_text().strip().endswith("}")
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


def test_checkpoint_round_trip(tmp_path):
    io = AtomicCheckpointIO()
    state = {"state_dict": {"w": torch.arange(4.0)}, "epoch": 3, "loops": {"x": [1, 2]}}
    io.save_checkpoint(state, tmp_path / "c.ckpt")
    loaded = io.load_checkpoint(tmp_path / "c.ckpt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.arange(4.0))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refusing to load"):
        safe_torch_load(path)
    assert not marker.exists()
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError):
        safe_torch_load(raw)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.ckpt"
    torch.save({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        safe_torch_load(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_torch_load(tmp_path / "none.ckpt")
