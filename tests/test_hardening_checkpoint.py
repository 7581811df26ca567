"""A hostile or broken checkpoint in a real run directory, through ``python -m dmlkit eval|embed|train --resume``.

The run directory (config.yaml, a real last.ckpt) comes from a one-epoch ``supervised`` run on a tiny
Fashion-MNIST subset; its ``checkpoints/last.ckpt`` is then replaced by a pickle that would create a marker file
when unpickled. Every command must refuse it: exit 2, one ``dmlkit: error:`` line, no marker.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dmlkit.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FMNIST.exists() and not os.environ.get("DMLKIT_DATA"),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--dataset", "fashion-mnist", "--train-subset", "120", "--test-subset", "100", "--batch-size", "60",
        "--no-progress", "--no-pictures", "--threads", "1", "--set", "backbone=mnist-net"]


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: the file appears iff the pickle ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", "--method", "supervised", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    return out


def _plant(run: Path, payload: bytes) -> Path:
    checkpoint = run / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(payload)
    return checkpoint


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONWARNINGS="ignore")
    env.pop("DMLKIT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dmlkit", *args], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("dmlkit: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_eval_refuses_a_crafted_checkpoint_in_a_subprocess(run_dir, tmp_path):
    """The acceptance case: ``python -m dmlkit eval RUN`` exits 2, names the file, and the pickle never runs."""
    marker = tmp_path / "pwned-eval"
    buffer_path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 1, "payload": _Payload(str(marker))}, buffer_path)  # a torch zip file
    checkpoint = _plant(run_dir, buffer_path.read_bytes())
    assert not marker.exists()
    result = _cli("eval", str(run_dir))
    assert result.returncode == 2, result.stderr[-3000:]
    line = _one_error_line(result.stderr)
    assert "refusing to load" in line and str(checkpoint) in line
    assert not marker.exists(), "the crafted pickle was executed"


CASES = [
    pytest.param("eval", "torch-zip", id="eval-torch-zip"),
    pytest.param("eval", "raw-pickle", id="eval-raw-pickle"),
    pytest.param("eval", "truncated", id="eval-truncated"),
    pytest.param("eval", "empty", id="eval-empty"),
    pytest.param("eval", "not-a-dict", id="eval-not-a-dict"),
    pytest.param("embed", "torch-zip", id="embed-torch-zip"),
    pytest.param("resume", "torch-zip", id="resume-torch-zip"),
    pytest.param("resume", "truncated", id="resume-truncated"),
    pytest.param("resume", "not-a-dict", id="resume-not-a-dict"),
]


@pytest.mark.parametrize("command, kind", CASES)
def test_every_command_refuses_a_bad_checkpoint(run_dir, tmp_path, capsys, command, kind):
    marker = tmp_path / "pwned"
    if kind == "torch-zip":
        torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, tmp_path / "evil.ckpt")
        payload = (tmp_path / "evil.ckpt").read_bytes()
    elif kind == "raw-pickle":
        payload = pickle.dumps(_Payload(str(marker)))
    elif kind == "truncated":
        torch.save({"state_dict": {"method.w": torch.ones(4000)}}, tmp_path / "ok.ckpt")
        payload = (tmp_path / "ok.ckpt").read_bytes()[:1500]
    elif kind == "empty":
        payload = b""
    else:  # loads with weights_only, but it is not a checkpoint
        torch.save([1, 2, 3], tmp_path / "list.ckpt")
        payload = (tmp_path / "list.ckpt").read_bytes()
    checkpoint = _plant(run_dir, payload)
    argv = {"eval": ["eval", str(run_dir)],
            "embed": ["embed", str(run_dir), "--out", str(tmp_path / "e.npy")],
            "resume": ["train", "--resume", "--out", str(run_dir), "--no-progress"]}[command]
    metrics_before = (run_dir / "metrics.json").read_bytes()
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    line = _one_error_line(err)
    assert str(checkpoint) in line or "checkpoint" in line, line
    assert not marker.exists(), "the crafted pickle was executed"
    assert not (tmp_path / "e.npy").exists()
    assert (run_dir / "metrics.json").read_bytes() == metrics_before, "a refused checkpoint changed the run"
