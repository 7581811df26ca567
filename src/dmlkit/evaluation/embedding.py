"""Embedding a whole split in order, in batches, without gradients (engine, CLI and protocols share it)."""
from __future__ import annotations

from typing import Callable

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
