"""The engine end to end through the CLI on a small Fashion-MNIST subset (Debian's package)."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dmlkit.cli import main

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FMNIST.exists() and not os.environ.get("DMLKIT_DATA"),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = ["--dataset", "fashion-mnist", "--train-subset", "480", "--test-subset", "300", "--batch-size", "60",
         "--no-progress", "--threads", "1", "--set", "backbone=mnist-net"]
METRIC_KEYS = {"recall@1", "recall@2", "recall@4", "recall@8", "nmi", "precision@1", "r_precision", "map@r"}


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "dmlkit", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_train_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "supervised", *SMALL, "--epochs", "2", "--picture-every", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| R@1 | R@2 | R@4 | R@8 | NMI | P@1 | RP | MAP@R |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics["test"])
    assert all(0.0 <= metrics["test"][k] <= 1.0 for k in METRIC_KEYS)
    assert metrics["test"]["recall@1"] > 0.5  # far above chance (0.1) after two epochs
    assert metrics["seconds"] > 0 and len(metrics["history"]) == 2
    for name in ("config.yaml", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "checkpoints/latest.json",
                 "logs/metrics.csv", "pictures/embedding_map.png", "pictures/embedding_map_epoch2.png",
                 "pictures/retrieval_grid.png", "report.md"):
        assert (out / name).exists(), name
    with (out / "logs/metrics.csv").open() as f:  # 16 steps: one per-step row (every 10 steps), 2 epoch means
        rows = list(csv.DictReader(f))
    assert sum(bool(r.get("train/loss_step")) for r in rows) == 1
    assert sum(bool(r.get("train/loss_epoch")) for r in rows) == 2

    # eval reproduces the final metrics from the checkpoint; embed writes the test embeddings
    assert main(["eval", str(out), "--json", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    for key in METRIC_KEYS:
        assert evaluated[key] == pytest.approx(metrics["test"][key], abs=1e-9)
    assert main(["embed", str(out), "--out", str(tmp_path / "e.npy")]) == 0
    embeddings = np.load(tmp_path / "e.npy")
    assert embeddings.shape == (300, 128)
    assert np.load(tmp_path / "e.labels.npy").shape == (300,)


def test_initial_method_evaluates_without_training(tmp_path):
    out = tmp_path / "initial"
    assert main(["train", "--method", "initial", *SMALL, "--no-pictures", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics["test"]) and (out / "checkpoints" / "last.ckpt").exists()


def test_mlrc_protocol_through_eval(tmp_path, capsys):
    """Four fold runs -> `dmlkit eval --protocol mlrc`: separated = mean of the four, concatenated = joined."""
    import torch

    from dmlkit.engine.run import load_run, prepare_data
    from dmlkit.evaluation import evaluate
    from dmlkit.evaluation.embedding import embed_dataset

    runs = []
    for fold in range(4):
        out = tmp_path / f"fold{fold}"
        assert main(["train", "--method", "initial", *SMALL, "--no-pictures", "--fold", str(fold), "--seed", str(fold),
                     "--out", str(out)]) == 0
        runs.append(str(out))
    assert main(["eval", "--protocol", "mlrc", *runs, "--json", str(tmp_path / "mlrc.json")]) == 0
    result = json.loads((tmp_path / "mlrc.json").read_text())
    assert "MLRC separated" in capsys.readouterr().out
    per_run = []
    for path in runs:
        config, method, _ = load_run(path)
        query = prepare_data(config, "none").query
        embeddings = torch.nn.functional.normalize(embed_dataset(method.embed, query, modules=(method,)), dim=1)
        per_run.append(evaluate(embeddings, query.true_labels, recall_at=(1,), nmi=False))
    for key in ("precision@1", "r_precision", "map@r"):
        assert result["separated"][key] == pytest.approx(np.mean([r[key] for r in per_run]), abs=1e-9)
        assert 0 <= result["concatenated"][key] <= 1


def test_label_free_methods_never_read_training_labels(tmp_path, monkeypatch):
    """Permuting the training labels leaves an STML run unchanged."""
    import dmlkit.data as data_module

    original = data_module.load_records

    def permuted(name, root=None):
        records = original(name, root)
        train = np.flatnonzero(records.splits == "train")
        records.labels[train] = np.random.default_rng(1).permutation(records.labels[train])
        return records

    args = ["train", "--method", "stml", *SMALL, "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "pictures" / "similarity_grid.png").exists()  # STML's pseudo-similarity, Fig. 2 style
    monkeypatch.setattr(data_module, "load_records", permuted)
    assert main([*args, "--no-pictures", "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["test"]
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())["test"]
    assert a == b


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    args = ["train", "--method", "supervised", *SMALL, "--epochs", "4", "--no-pictures"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    env = dict(os.environ, PYTHONPATH=SRC, PYTHONWARNINGS="ignore")
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "dmlkit", *args, "--out", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = out / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists(), "killed before the end, the run must not look complete"
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3, 4]
    for a, b in zip(resumed["history"], whole["history"]):
        assert a["recall@1"] == b["recall@1"] and a["map@r"] == b["map@r"], (a, b)
    assert resumed["test"] == whole["test"]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    result = _cli("train", "--method", "supervised", *SMALL, "--epochs", "1", "--no-pictures",
                  "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["recall@1"] > 0.4


# One process vs two gloo processes with the same global batch. Measured on this subset (3 seeds,
# 2 epochs, 1,200 training / 300 test images): |delta R@1| <= 0.027 and |delta MAP@R| <= 0.020 for
# the correct engine; a deliberately broken one (every rank training on rank 0's half of each global
# batch) lowered supervised MAP@R by 0.074-0.095, and gathering STML's refresh embeddings in the wrong
# rank order left 0.4 % of its neighbour table in place instead of 70-76 %.
DDP_RUN = ["--train-subset", "1200", "--epochs", "2", "--no-pictures", "--seed", "0"]
DDP_ARGS = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
DDP_TOLERANCE = {"recall@1": 0.05, "map@r": 0.04}


def _one_and_two_processes(tmp_path, method: str, *extra: str) -> tuple[Path, Path]:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--method", method, *SMALL, *DDP_RUN, *extra, "--out", str(one)]) == 0
    result = _cli("train", "--method", method, *SMALL, *DDP_RUN, *extra, *DDP_ARGS, "--out", str(two))
    assert result.returncode == 0, result.stderr[-2000:]
    a = json.loads((one / "metrics.json").read_text())["test"]
    b = json.loads((two / "metrics.json").read_text())["test"]
    for key, tolerance in DDP_TOLERANCE.items():
        assert abs(a[key] - b[key]) <= tolerance, (key, a[key], b[key])
    return one, two


@pytest.mark.slow
def test_two_processes_match_one_process_supervised(tmp_path):
    """Two DDP processes (gloo, CPU) train ``supervised`` to the metrics of one process with the same
    global batch of 60: |delta R@1| <= 0.05 and |delta MAP@R| <= 0.04.

    Not equal: each rank's multi-similarity loss sees only its 30 images (pairs across the halves are
    missing, and the averaged gradient is not the full-batch one) and draws its own augmentations, so
    the runs drift apart like runs with other random streams. Correct runs differed by at most 0.027
    R@1 (1/300 per query) and 0.020 MAP@R over three seeds; both ranks training on the same half of
    every batch costs 0.074-0.095 MAP@R, about twice the tolerance. R@1 on 300 queries is too coarse to
    tell that bug apart (it moved < 0.035): its bound is a sanity check, MAP@R is the sharp one.
    """
    _one_and_two_processes(tmp_path, "supervised")


@pytest.mark.slow
def test_two_processes_match_one_process_stml(tmp_path):
    """Two DDP processes train ``stml`` (lr 1e-3 as the Fashion-MNIST preset) to the metrics of one
    process: |delta R@1| <= 0.05, |delta MAP@R| <= 0.04, and the neighbour tables of their last
    refresh share >= 50 % of their entries.

    Half batches change STML's in-batch contextual similarity and each rank draws its own views, so
    exact equality is not expected (correct runs: |delta R@1| <= 0.023, |delta MAP@R| <= 0.012 over three
    seeds). Two epochs of STML on Fashion-MNIST barely move the test metrics away from the initial
    network (the full benchmark gains 2 R@1 points in 10 epochs), so they cannot show a refresh bug:
    gathering the refresh embeddings in the wrong rank order moved R@1 by only 0.037. The neighbour
    table that the refresh builds can: it holds the last refresh's 4 neighbours of every training
    image, 70-76 % shared between correct one- and two-process runs, 0.4 % with the wrong order.
    """
    from dmlkit.engine.checkpoint import load_checkpoint_dict

    one, two = _one_and_two_processes(tmp_path, "stml", "--lr", "1e-3")
    tables = [load_checkpoint_dict(run / "checkpoints" / "last.ckpt")["dmlkit"]["method_state"]["neighbours"][:, 1:]
              for run in (one, two)]
    assert tables[0].shape == tables[1].shape == (1200, 4)
    shared = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(*tables)) / tables[0].numel()
    assert shared >= 0.5, shared


def test_missing_dataset_exits_2_with_one_clear_line(tmp_path):
    out = tmp_path / "cub"
    result = _cli("train", "--method", "supervised", "--dataset", "cub200", "--data-root", str(tmp_path / "nowhere"),
                  "--out", str(out))
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("dmlkit: error:")]
    assert len(error_lines) == 1 and "cub200" in error_lines[0].lower() or "CUB" in error_lines[0]
    assert not (out / "metrics.json").exists()


def test_non_finite_loss_stops_with_exit_3(tmp_path, monkeypatch, capsys):
    import torch

    from dmlkit.methods.reference import SupervisedMethod

    original = SupervisedMethod.training_loss
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        losses = original(self, batch)
        if calls["n"] > 10:
            losses["loss"] = losses["loss"] * torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(SupervisedMethod, "training_loss", poisoned)
    out = tmp_path / "nan"
    code = main(["train", "--method", "supervised", *SMALL, "--epochs", "3", "--no-pictures", "--out", str(out)])
    assert code == 3
    message = capsys.readouterr().err
    assert "non-finite loss" in message and "supervised" in message and "step" in message
    assert "last.ckpt (epoch 1)" in message
    assert not (out / "metrics.json").exists()

    # --on-nan skip: the bad batches are skipped and counted, the run finishes
    calls["n"] = 0
    skipped = tmp_path / "skip"
    assert main(["train", "--method", "supervised", *SMALL, "--epochs", "2", "--no-pictures", "--on-nan", "skip",
                 "--out", str(skipped)]) == 0
    assert json.loads((skipped / "metrics.json").read_text())["skipped_batches"] == 16 - 10
