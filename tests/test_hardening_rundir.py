"""Run directories never lose a file (issue 23): refusal and --overwrite, new default directories and
runs/latest, resume in the directory given, one writer per directory, Ctrl-C, file modes, config.yaml.

One 1-epoch ``supervised`` run on 100 Fashion-MNIST images (module fixture) is copied into each test
that changes a run; probes that must fail do so before any data is read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from dmlkit.cli import main
from dmlkit.engine.rundir import LOCK, MARKER

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.exists() and not os.environ.get("DMLKIT_DATA"),
                                  reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--dataset", "fashion-mnist", "--train-subset", "100", "--test-subset", "100", "--batch-size", "50",
        "--no-progress", "--no-pictures", "--threads", "1", "--set", "backbone=mnist-net"]
TRAIN = ["train", "--method", "supervised", *TINY, "--epochs", "1"]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dmlkit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    if not FMNIST.exists() and not os.environ.get("DMLKIT_DATA"):
        pytest.skip("Fashion-MNIST not installed")
    out = tmp_path_factory.mktemp("rundir") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture()
def copy(run_dir, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    return target


def test_a_folder_dmlkit_did_not_make_is_refused_and_never_deleted(tmp_path, capsys):
    photos = tmp_path / "photos"
    for name in ("pictures/cat.jpg", "logs/2024.txt", "checkpoints/notes.txt", "metrics.json", "report.md"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_text(name)
    before = _digest(photos)
    line = _error(capsys, [*TRAIN, "--out", str(photos)])
    assert str(photos) in line and "--resume" in line and "--overwrite" in line
    line = _error(capsys, [*TRAIN, "--out", str(photos), "--overwrite"])
    assert "does not hold a dmlkit run" in line and MARKER in line
    import dmlkit
    from dmlkit.engine.config import ConfigError

    with pytest.raises(ConfigError, match="not empty"):  # the Python API refuses alike
        dmlkit.train("supervised", "fashion-mnist", str(photos), epochs=1)
    assert _digest(photos) == before


@needs_fmnist
def test_overwrite_replaces_a_dmlkit_run_and_keeps_everything_else(copy, capsys):
    (copy / "notes.txt").write_text("my notes")
    (copy / "test.npy").write_bytes(b"embeddings a user made")
    old_metrics = json.loads((copy / "metrics.json").read_text())
    assert old_metrics["method"] == "supervised"
    assert main(["train", "--method", "initial", *TINY, "--out", str(copy), "--overwrite"]) == 0
    assert json.loads((copy / "metrics.json").read_text())["method"] == "initial"
    assert (copy / "notes.txt").read_text() == "my notes" and (copy / "test.npy").exists()
    assert not (copy / LOCK).exists()


@needs_fmnist
def test_without_out_each_run_gets_a_new_directory_and_runs_latest_points_at_it(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DMLKIT_RUN_DIR", raising=False)
    with caplog.at_level(logging.INFO, logger="dmlkit"):
        assert main(["train", "--method", "initial", *TINY]) == 0
    made = [p for p in (tmp_path / "runs").iterdir() if p.name != "latest"]
    assert len(made) == 1 and made[0].name.endswith("-initial-fashion-mnist") and (made[0] / MARKER).is_file()
    assert f"run directory: {Path('runs') / made[0].name}" in caplog.text  # printed at the start
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == made[0].resolve()


def test_runs_latest_is_replaced_only_when_dmlkit_wrote_it(tmp_path, monkeypatch):
    from dmlkit.engine import rundir

    runs = tmp_path / "runs"
    first, second = runs / "20260101-000000-stml-x", runs / "20260101-000001-stml-x"
    for folder in (first, second):
        folder.mkdir(parents=True)
        (folder / MARKER).write_text("{}")
    rundir.point_latest(first)
    rundir.point_latest(second)
    assert os.readlink(runs / "latest") == second.name
    monkeypatch.setattr(rundir.os, "symlink", lambda *a, **k: (_ for _ in ()).throw(OSError("no symlinks")))
    rundir.point_latest(first)  # the text-file fallback replaces dmlkit's own symlink
    assert not (runs / "latest").is_symlink() and rundir.resolve_latest(runs / "latest") == first
    mine = tmp_path / "mine" / "runs"
    (mine / "latest").mkdir(parents=True)
    (mine / "latest" / "keep.txt").write_text("user data")  # an older run's directory, or the user's own
    (mine / "new").mkdir()
    rundir.point_latest(mine / "new")
    assert (mine / "latest" / "keep.txt").read_text() == "user data"


@needs_fmnist
def test_a_copied_run_resumes_in_the_copy_from_another_directory(run_dir, copy, tmp_path, monkeypatch, caplog):
    """The copy carries the original's absolute ``out`` in config.yaml; a stale lock (a process that
    has ended) is taken over with a warning; raising --epochs extends the run."""
    before = _digest(run_dir)
    assert yaml.safe_load((copy / "config.yaml").read_text())["out"] == str(run_dir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (copy / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with caplog.at_level(logging.WARNING, logger="dmlkit"):
        assert main(["train", "--resume", "--out", "../copy", "--epochs", "2", "--no-progress"]) == 0
    assert f"left by process {dead.pid}, which is no longer running" in caplog.text
    metrics = json.loads((copy / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert yaml.safe_load((copy / "config.yaml").read_text())["epochs"] == 2
    assert _digest(run_dir) == before, "resuming the copy changed the original"
    assert not (copy / LOCK).exists()


@needs_fmnist
@pytest.mark.parametrize("flags, words", [
    (["--lr", "0.5"], ["cannot change lr", "saved 0.001", "given 0.5", "drop --lr"]),
    (["--batch-size", "10"], ["cannot change batch_size", "drop --batch-size"]),
    (["--seed", "3"], ["cannot change seed"]),
    (["--set", "loss=triplet"], ["cannot change method option loss", "'MultiSimilarityLoss'", "'triplet'"]),
    (["--dataset", "mnist"], ["cannot change dataset"]),
    (["--epochs", "0"], ["epochs 0 is below the 1 epochs"]),
], ids=["lr", "batch-size", "seed", "option", "dataset", "epochs-below"])
def test_resume_refuses_a_recipe_change_by_name(copy, capsys, flags, words):
    before = _digest(copy)
    line = _error(capsys, ["train", "--resume", "--out", str(copy), *flags])
    for word in words:
        assert word in line, line
    assert _digest(copy) == before


@needs_fmnist
def test_a_live_lock_refuses_train_and_resume_at_once_naming_the_process(copy, tmp_path, capsys):
    holder = os.getppid()  # a live process other than this one
    (copy / LOCK).write_text(json.dumps({"pid": holder, "host": socket.gethostname()}))
    before = _digest(copy)
    for argv in (["train", "--resume", "--out", str(copy)], [*TRAIN, "--out", str(copy), "--overwrite"]):
        line = _error(capsys, argv)
        assert f"in use by process {holder}" in line and str(copy / LOCK) in line
    assert _digest(copy) == before
    from dmlkit.engine.rundir import check_lock

    (copy / LOCK).write_text(json.dumps({"pid": holder, "host": socket.gethostname(), "dir": str(tmp_path / "else")}))
    check_lock(copy)  # a lock copied along with the directory does not hold the copy


@needs_fmnist
@pytest.mark.parametrize("content, words", [
    ("method: !!python/object/apply:os.system ['touch pwned']\n", ["line 1", "python/object", "plain YAML"]),
    ("- supervised\n", ["got a list at the top"]),
    ("methd: supervised\n", ["unknown setting 'methd'", "did you mean 'method'"]),
], ids=["python-tag", "list", "unknown-key"])
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_tampered_config_yaml_is_refused_in_one_line(copy, tmp_path, monkeypatch, capsys, content, words, command):
    monkeypatch.chdir(tmp_path)
    (copy / "config.yaml").write_text(content)
    before = _digest(copy)
    argv = ["eval", str(copy)] if command == "eval" else ["train", "--resume", "--out", str(copy)]
    line = _error(capsys, argv)
    assert f"run config {copy / 'config.yaml'}" in line and all(word in line for word in words), line
    assert _digest(copy) == before and not (tmp_path / "pwned").exists()


@needs_fmnist
def test_ctrl_c_second_writer_and_eval_while_training(tmp_path, capsys):
    """A real training process: a second writer is refused naming its PID, eval reads a complete
    checkpoint meanwhile, and SIGINT ends it with exit 130 and the one line naming epoch, step and
    checkpoint; the lock is released."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONWARNINGS="ignore")
    env.pop("DMLKIT_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-m", "dmlkit", "train", "--method", "supervised", *TINY,
                                "--epochs", "500", "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (out / "checkpoints" / "latest.json").exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert f"in use by process {process.pid}" in _error(capsys, ["train", "--resume", "--out", str(out)])
        assert main(["eval", str(out)]) == 0
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dmlkit:")]
    assert len(lines) == 1, err[-3000:]
    pointer = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert lines[0].startswith("dmlkit: interrupted at epoch ") and ", step " in lines[0]
    assert f"last checkpoint: {out}/checkpoints/last.ckpt (epoch {pointer['epoch']})" in lines[0]
    assert lines[0].endswith(f"continue with `dmlkit train --resume --out {out}`")
    assert not (out / LOCK).exists()


def test_eval_reads_a_whole_checkpoint_while_a_writer_replaces_it(tmp_path):
    from dmlkit.engine.checkpoint import atomic_torch_save, load_checkpoint_dict

    path = tmp_path / "last.ckpt"
    states = [{"state_dict": {"w": torch.full((20000,), float(i))}} for i in range(2)]
    atomic_torch_save(states[0], path)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            atomic_torch_save(states[i % 2], path)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(40):
            w = load_checkpoint_dict(path)["state_dict"]["w"]
            assert w.shape == (20000,) and bool((w == w[0]).all()) and float(w[0]) in (0.0, 1.0)
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_take_the_users_umask(tmp_path, umask):
    from dmlkit.engine.checkpoint import atomic_write_json

    previous = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask


@needs_fmnist
def test_run_files_are_not_private_and_config_yaml_records_the_resolved_run(run_dir):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.yaml", "metrics.json", "checkpoints/last.ckpt", "checkpoints/latest.json", MARKER):
        assert (run_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    record = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert record["options"] == {"loss": "MultiSimilarityLoss", "miner": None, "backbone": "mnist-net",
                                 "embedding_dim": 128, "pretrained": "auto", "bn_freeze": None, "input_size": None,
                                 "samples_per_class": None,
                                 "normalize": True, "proxy_lr_multiplier": 100.0}
    assert (record["optimizer"], record["scheduler"], record["lr"], record["seed"]) == ("adamw", "cosine", 0.001, 0)
    assert record["resolved"]["backbone"] == ["mnist-net"] and record["resolved"]["pretrained"] == ["random init"]
    assert record["resolved"]["views_preset"] == "grey28"
    assert record["versions"]["torch"] == torch.__version__ and "lightning" in record["versions"]


def test_raising_epochs_on_resume_continues_the_cosine_of_the_new_length():
    """A 1-epoch cosine run has decayed to 0; extended to 3 epochs at epoch 1 its learning rate is
    lr0 (1 + cos(pi / 3)) / 2 = 0.75 lr0 (the 3-epoch cosine at epoch 1), by hand."""
    from types import SimpleNamespace

    from dmlkit.engine.resume import ExtendSchedule
    from dmlkit.models.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], lr=0.2)
    scheduler = build_scheduler("cosine", optimizer, epochs=1)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    ExtendSchedule(3).on_train_start(trainer, None)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.15)
    scheduler.step()  # epoch 2 of 3: lr0 (1 + cos(2 pi / 3)) / 2 = 0.25 lr0
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


@needs_fmnist
def test_the_demo_command_runs_twice(run_dir, tmp_path, monkeypatch):
    """scripts/demo.sh's train line (shortened through its "$@") where runs/demo already holds an
    earlier run (the module's run, copied): it replaces that run, and a file the user added stays."""
    import shlex

    script = (Path(__file__).resolve().parents[1] / "scripts" / "demo.sh").read_text()
    (line,) = [line for line in script.splitlines() if line.startswith("dmlkit train --preset demo")]
    argv = shlex.split(line)[1:]
    root = argv.index("--data-root")
    argv = [arg for arg in argv[:root] + argv[root + 2:] if arg != "$@"]  # the demo's glyphs build -> Fashion-MNIST
    quick = ["--dataset", "fashion-mnist", "--epochs", "1", "--train-subset", "60", "--test-subset", "50",
             "--batch-size", "30", "--no-pictures", "--no-progress", "--threads", "1", "--set", "g_dim=32",
             "--set", "embedding_dim=32", "--set", "backbone=mnist-net", "--set", "pretrained=null"]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(run_dir, tmp_path / "runs" / "demo")  # the first run
    (tmp_path / "runs" / "demo" / "my-notes.txt").write_text("keep")
    assert main([*argv, *quick]) == 0
    assert json.loads((tmp_path / "runs" / "demo" / "metrics.json").read_text())["method"] == "stml"
    assert (tmp_path / "runs" / "demo" / "my-notes.txt").read_text() == "keep"
