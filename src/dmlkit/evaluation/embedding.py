"""Embedding a whole split in order, in batches, without gradients (engine, CLI and protocols share it)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from dmlkit.data.base import DMLDataset


def iterate_images(dataset: DMLDataset, batch_size: int = 512, num_workers: int = 0):
    """Yield float image batches ``[b, C, H, W]`` in [0, 1] in dataset order."""
    if isinstance(getattr(dataset, "images", None), np.ndarray):
        for start in range(0, len(dataset), batch_size):
            chunk = dataset.images[start:start + batch_size]
            yield torch.from_numpy(np.ascontiguousarray(chunk)).float().div_(255.0)
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch in loader:
        yield batch["image"]


@torch.no_grad()
def embed_dataset(
    fn: Callable[[Tensor], Tensor],
    dataset: DMLDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    modules: tuple[torch.nn.Module, ...] = (),
    num_workers: int = 0,
) -> Tensor:
    """``fn(images)`` over every item of ``dataset`` in order -> CPU float tensor ``[N, D]``.

    ``modules`` are put in eval mode for the pass and restored to their previous mode afterwards.
    """
    modes = [m.training for m in modules]
    for module in modules:
        module.eval()
    try:
        parts = [fn(images.to(device)).float().cpu() for images in iterate_images(dataset, batch_size, num_workers)]
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
    if not parts:
        raise ValueError(f"{dataset.name}: cannot embed an empty dataset")
    return torch.cat(parts)


def embed_dataset_distributed(
    fn: Callable[[Tensor], Tensor],
    dataset: DMLDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    modules: tuple[torch.nn.Module, ...] = (),
    num_workers: int = 0,
) -> Tensor:
    """:func:`embed_dataset` shared out over the ranks of ``torch.distributed`` -> the full ``[N, D]``
    CPU float tensor, identical on every rank.

    Every rank must call it (it is a collective). Rank ``r`` embeds one contiguous shard made of whole
    ``batch_size`` batches, ``ceil(ceil(N / batch_size) / world)`` of them (the last shards may be short
    or empty); the shards are padded to one length, all-gathered and cut back to ``N`` rows in item
    order. Each item therefore goes through ``fn`` in the same batch as in the one-process pass, so with
    the same weights the result is the one-process result bit for bit. Without an initialised process
    group, or with one process, this is :func:`embed_dataset` itself.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embed_dataset(fn, dataset, device, batch_size, modules, num_workers)
    if len(dataset) == 0:
        raise ValueError(f"{dataset.name}: cannot embed an empty dataset")
    rank, world = dist.get_rank(), dist.get_world_size()
    n = len(dataset)
    batches = (n + batch_size - 1) // batch_size
    shard = (batches + world - 1) // world * batch_size  # whole batches per rank
    start, stop = min(n, rank * shard), min(n, (rank + 1) * shard)
    local = (embed_dataset(fn, dataset.subset(np.arange(start, stop)), device, batch_size, modules, num_workers)
             if stop > start else torch.zeros(0, 0))
    # NCCL moves CUDA tensors only; gloo (CPU runs) moves CPU tensors
    wire = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    width = torch.tensor([local.shape[1]], dtype=torch.long, device=wire)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)  # a rank with an empty shard learns D from the others
    padded = torch.zeros(shard, int(width.item()), dtype=torch.float32, device=wire)
    if len(local):
        padded[: len(local)] = local.to(wire)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    # shard r fills rows [r * shard, r * shard + its length); only trailing shards are short, so the
    # first n rows of the concatenation are the items in order
    return torch.cat(parts)[:n].cpu()
