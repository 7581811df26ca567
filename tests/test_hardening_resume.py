"""Kill-and-resume at many points: the resumed run equals an uninterrupted one, and no checkpoint is
ever left truncated.

An STML run (its refresh embeds the whole training split at every epoch start) on a tiny
Fashion-MNIST subset is SIGKILLed

* inside the refresh of epoch 2 (after the embedding pass, in the neighbour-table search),
* half-way through writing ``last.ckpt`` of epoch 2 (half the bytes in the temporary file),
* half-way through writing ``latest.json`` of epoch 2 (``last.ckpt`` already replaced),
* at seeded random moments mid-epoch,
* repeatedly, within milliseconds of each new ``latest.json`` (epoch start and refresh),

then resumed with ``dmlkit train --resume``. The exact kill points are injected by a wrapper around
``python -m dmlkit`` that SIGKILLs its own process at the chosen call (nothing in dmlkit changes).
CPU, fixed seed, ``--threads 1``: every metric of every epoch equals the uninterrupted run's.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmlkit.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FMNIST.exists() and not os.environ.get("DMLKIT_DATA"),
                                 reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")]
SRC = str(Path(__file__).resolve().parents[1] / "src")
EPOCHS = 3
ARGS = ["train", "--method", "stml", "--dataset", "fashion-mnist", "--train-subset", "240", "--test-subset", "200",
        "--batch-size", "60", "--epochs", str(EPOCHS), "--no-progress", "--no-pictures", "--threads", "1",
        "--set", "backbone=mnist-net"]

# Runs `python -m dmlkit ...` and SIGKILLs itself at the call named by $KILL_AT:
#   "refresh:N"      the N-th neighbour-table search of a refresh (the embedding pass is done);
#   "write:NAME:N"   the N-th atomic write of a file called NAME, after half its bytes reached the temp file.
WRAPPER = r"""
import os, signal, sys, tempfile
rule = os.environ.get("KILL_AT", "").split(":")
import dmlkit.engine.checkpoint as ck
import dmlkit.engine.module as mod
calls = {"n": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if rule[0] == "refresh":
    original_knn = mod.refresh_knn
    def refresh_knn(x, k):
        calls["n"] += 1
        if calls["n"] == int(rule[1]):
            die()
        return original_knn(x, k)
    mod.refresh_knn = refresh_knn
elif rule[0] == "write":
    original_write = ck.atomic_write_bytes
    def atomic_write_bytes(path, data):
        if os.path.basename(str(path)) == rule[1]:
            calls["n"] += 1
            if calls["n"] == int(rule[2]):
                fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(str(path)) + ".", suffix=".tmp",
                                           dir=os.path.dirname(str(path)))
                os.write(fd, data[: len(data) // 2])
                os.fsync(fd)
                die()
        return original_write(path, data)
    ck.atomic_write_bytes = atomic_write_bytes
from dmlkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(kill_at: str = "") -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
                PYTHONWARNINGS="ignore", KILL_AT=kill_at)


def _popen(out: Path, kill_at: str = "", resume: bool = False) -> subprocess.Popen:
    argv = ["train", "--resume", "--out", str(out), "--no-progress"] if resume else [*ARGS, "--out", str(out)]
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *argv], env=_env(kill_at),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _pointer_epoch(out: Path) -> int:
    try:
        return int(json.loads((out / "checkpoints" / "latest.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main([*ARGS, "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


def _assert_no_truncated_checkpoint(out: Path) -> None:
    from dmlkit.engine.checkpoint import safe_torch_load

    folder = out / "checkpoints"
    for path in folder.glob("*.ckpt"):
        checkpoint = safe_torch_load(path)  # raises CheckpointError on a truncated file
        assert "state_dict" in checkpoint, path
    if (folder / "latest.json").exists():
        json.loads((folder / "latest.json").read_text())  # complete JSON
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    # a SIGKILL mid-write may leave a hidden temporary file; it must never look like a checkpoint
    assert all(name.startswith(".") and not name.endswith(".ckpt") for name in leftovers), leftovers


def _resume_and_compare(out: Path, whole: dict) -> None:
    assert not (out / "metrics.json").exists(), "a killed run must not look complete"
    _assert_no_truncated_checkpoint(out)
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    _assert_no_truncated_checkpoint(out)
    resumed = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in resumed["history"]] == list(range(1, EPOCHS + 1))
    keys = ("recall@1", "recall@2", "map@r", "nmi")
    for a, b in zip(resumed["history"], whole["history"]):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, (a, b)
    assert resumed["test"] == whole["test"]


@pytest.mark.parametrize("kill_at", ["refresh:2", "write:last.ckpt:2", "write:latest.json:2"],
                         ids=["mid-refresh", "mid-write-last.ckpt", "mid-write-latest.json"])
def test_kill_at_an_exact_point_then_resume(whole, tmp_path, kill_at):
    out = tmp_path / "run"
    process = _popen(out, kill_at)
    _, err = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, f"the kill point was never reached: {err[-2000:]}"
    assert _pointer_epoch(out) == 1
    if kill_at.startswith("write"):
        assert any(p.name.endswith(".tmp") for p in (out / "checkpoints").iterdir()), "no half-written file"
    _resume_and_compare(out, whole)


def test_kill_at_random_moments_mid_epoch_then_resume(whole, tmp_path):
    """Two seeded random kills inside epochs 2 and 3 (each after a random part of an epoch's time)."""
    rng = random.Random(20261122)
    epoch_seconds = max(r["epoch_seconds"] for r in whole["history"])
    out = tmp_path / "run"
    resume = False
    for target in (1, 2):
        process = _popen(out, resume=resume)
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and _pointer_epoch(out) < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.1, 0.9) * epoch_seconds)
        process.send_signal(signal.SIGKILL)
        process.wait()
        resume = True
        if (out / "metrics.json").exists():  # the run outran the kill: nothing left to test at this point
            break
    if (out / "metrics.json").exists():
        pytest.skip("the machine was too fast for a mid-epoch kill")
    _resume_and_compare(out, whole)


def test_kill_repeatedly_right_after_each_new_pointer_then_resume(whole, tmp_path):
    """A kill within milliseconds of each new latest.json: the next epoch's start (refresh) each time."""
    out = tmp_path / "run"
    seen, resume = 0, False
    while seen < EPOCHS - 1:
        process = _popen(out, resume=resume)
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and _pointer_epoch(out) <= seen:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert _pointer_epoch(out) > seen, "no progress between kills"
        seen, resume = _pointer_epoch(out), True
        _assert_no_truncated_checkpoint(out)
    _resume_and_compare(out, whole)
