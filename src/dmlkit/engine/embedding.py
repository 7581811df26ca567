"""Embedding a whole split in order, in batches, without gradients; and neighbour tables."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from dmlkit.data.base import DMLDataset


def iterate_images(dataset: DMLDataset, batch_size: int = 512, num_workers: int = 0):
    """Yield float image batches ``[b, C, H, W]`` in [0, 1] in dataset order."""
    if isinstance(dataset.images, np.ndarray):
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


def neighbour_table(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact squared-Euclidean k nearest neighbours of every row among all rows, self at rank 0.

    Returns ``(distances [N, k], indices [N, k])``. Uses the evaluator's chunked search (never N x N).
    """
    from dmlkit.evaluation.knn import knn_search

    if k > len(x):
        raise ValueError(f"asked for {k} neighbours but the split has only {len(x)} items; lower num_neighbors")
    distances, indices = knn_search(x, k, exclude_self=False)
    indices = torch.as_tensor(indices)
    # The item itself is rank 0 by definition, also when duplicates sit at distance 0.
    rows = torch.arange(len(x))
    self_pos = (indices == rows[:, None]).int().argmax(dim=1)
    has_self = (indices == rows[:, None]).any(dim=1)
    fix = ~has_self | (self_pos != 0)
    if fix.any():
        for i in torch.nonzero(fix).flatten().tolist():
            others = indices[i][indices[i] != i][: k - 1]
            indices[i] = torch.cat([torch.tensor([i]), others])
    return torch.as_tensor(distances), indices
