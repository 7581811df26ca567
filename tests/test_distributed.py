"""Distributed pieces without a dataset download: the sharded refresh embedding over two gloo
processes, and the methods that refuse DDP."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dmlkit.data.base import DMLDataset
from dmlkit.evaluation.embedding import embed_dataset, embed_dataset_distributed

# (items, batch_size): shards 12 + 11; 8 + 1 (a short last shard); 4 + 0 (rank 1 embeds nothing)
CASES = [(23, 4), (9, 4), (3, 4)]


def _dataset(n: int) -> DMLDataset:
    images = np.random.default_rng(n).integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
    return DMLDataset(images, np.arange(n) % 3, name=f"tiny{n}", image_size=8)


def _net() -> nn.Module:
    torch.manual_seed(0)  # the same weights in every process
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        net = _net().train()
        results = [embed_dataset_distributed(net, _dataset(n), batch_size=b, modules=(net,)) for n, b in CASES]
        # the engine's buffer sync before refresh and evaluation: every rank ends with rank 0's statistics
        from types import SimpleNamespace

        from dmlkit.engine.module import MethodModule

        norm = nn.BatchNorm1d(3)
        norm.running_mean.fill_(float(rank + 1))
        MethodModule._sync_buffers_from_rank_zero(SimpleNamespace(trainer=SimpleNamespace(world_size=world),
                                                                  buffers=norm.buffers))
        torch.save({"embeddings": results, "training": net.training, "running_mean": norm.running_mean},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sharded_embedding_is_the_one_process_embedding_in_order(tmp_path):
    """Two gloo ranks each embed a shard; both get exactly (bitwise) the one-process [N, d] in item order.
    The engine's buffer sync gives both ranks rank 0's buffers."""
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    net = _net()
    expected = [embed_dataset(net, _dataset(n), batch_size=b) for n, b in CASES]
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert saved["training"], "the modules' training mode is restored after the pass"
        assert torch.equal(saved["running_mean"], torch.ones(3)), "buffers synced from rank 0"
        for (n, _), got, want in zip(CASES, saved["embeddings"], expected):
            assert got.shape == (n, 5) and got.dtype == torch.float32 and got.device.type == "cpu"
            assert torch.equal(got, want), (rank, n)


def test_without_a_process_group_it_is_embed_dataset():
    net = _net()
    data = _dataset(10)
    assert torch.equal(embed_dataset_distributed(net, data, batch_size=4), embed_dataset(net, data, batch_size=4))


SINGLE_PROCESS = ["ssdml", "deep-lrml", "deep-seraph", "deep-isdml", "deep-apllr", "deep-apit", "slade"]


@pytest.mark.parametrize("name", SINGLE_PROCESS)
def test_single_process_methods_refuse_ddp_with_the_fix(name, tmp_path, capsys):
    """`dmlkit train --devices 2` exits 2 before any process starts, naming the method and `--devices 1`."""
    from dmlkit.cli import main
    from dmlkit.methods import method_class

    out = tmp_path / "run"
    code = main(["train", "--method", name, "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "nowhere"),
                 "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--no-progress", "--out", str(out)])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dmlkit: error:")]
    assert len(lines) == 1 and f"'{name}'" in lines[0] and "one process" in lines[0] and "--devices 1" in lines[0]
    assert not out.exists(), "a refused run touches no run directory"
    method_class(name).check_world_size(1)  # one process is fine


@pytest.mark.parametrize("name", ["ssdml", "deep-lrml", "deep-apit"])
def test_single_process_methods_refuse_a_distributed_refresh(name):
    """Driven without the CLI (world size from the engine), the first refresh refuses too."""
    from dmlkit.evaluation.knn import refresh_knn
    from dmlkit.methods import BuildInfo, RefreshContext, method_class

    method = method_class(name).from_options({}, BuildInfo(channels=1, image_size=28, num_train=6, num_classes=3,
                                                           dataset="tiny", views_preset="grey28"))
    context = RefreshContext(epoch=0, train=_dataset(6), embed=lambda *a, **k: None, knn=refresh_knn,
                             device=torch.device("cpu"), world_size=2, rank=1)
    with pytest.raises(ValueError, match=rf"'{name}' trains in one process only .*--devices 1"):
        method.refresh(context)


@pytest.mark.parametrize("name", ["supervised", "stml", "plm", "drml", "deepcluster", "instance"])
def test_other_methods_accept_ddp(name):
    from dmlkit.methods import method_class

    cls = method_class(name)
    assert cls.single_process is None  # nothing for the engine to refuse
    assert cls.check_world_size(2) is None and cls.check_world_size(8) is None


def test_exactly_the_single_process_methods_refuse_ddp():
    """Every registered method is on one side: the five classical SSDML baselines, SSDML and SLADE refuse."""
    from dmlkit.methods import REGISTRY, method_class

    refusing = {name for name in REGISTRY if method_class(name).single_process}
    assert refusing == {"ssdml", "slade", "deep-lrml", "deep-seraph", "deep-isdml", "deep-apllr", "deep-apit"}
    for name in refusing:
        with pytest.raises(ValueError, match=rf"'{name}' trains in one process only"):
            method_class(name).check_world_size(2)
