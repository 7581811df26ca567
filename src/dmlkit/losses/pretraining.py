"""Softmax pre-training of an embedding network on the labeled items (SSDML's CIFAR-10 stage, seed 002:
"the L layer replaced by a softmax classifier"): cross-entropy of a fresh linear classifier on the
network's features, Adam, one pass over the labeled items per epoch in a seeded order."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dmlkit.data.seeding import seeded_generator


def softmax_pretraining(
    features: Callable[[Tensor], Tensor], parameters: Iterable[nn.Parameter], feature_dim: int,
    images: Callable[[np.ndarray], Tensor], labels: np.ndarray, *, epochs: int, lr: float, batch_size: int,
    seed: int, device: torch.device | str = "cpu",
) -> float:
    """Train ``features`` (images ``[B, C, H, W]`` -> ``[B, feature_dim]``) through a linear softmax classifier.

    Args:
        features: the network up to the metric, in training mode.
        parameters: the network parameters the optimizer moves (the classifier's are added).
        feature_dim: width of ``features``' output.
        images: ``images(indices [B]) -> [B, C, H, W]`` training images by position.
        labels: ``[N]`` visible labels of the training split (-1 = unlabeled, skipped).
        epochs, lr, batch_size: the stage's schedule (Adam at ``lr``, ``batch_size`` labeled images a step).
        seed: the order of epoch e is a permutation drawn from ``seeded_generator(seed, e, 30)``.

    Returns:
        the last batch's cross-entropy.
    """
    labeled = np.flatnonzero(labels >= 0)
    if len(labeled) == 0:
        raise ValueError("softmax pre-training needs labeled items; run with labels_per_class or set pretrain_epochs=0")
    classes, targets = np.unique(labels[labeled], return_inverse=True)
    classifier = nn.Linear(feature_dim, len(classes)).to(device)
    optimizer = torch.optim.Adam(list(parameters) + list(classifier.parameters()), lr=lr)
    targets = torch.as_tensor(targets)
    loss = torch.zeros(())
    for epoch in range(epochs):
        order = torch.randperm(len(labeled), generator=seeded_generator(seed, epoch, 30))
        for chunk in order.split(batch_size):
            batch = images(labeled[chunk.numpy()]).to(device)
            loss = F.cross_entropy(classifier(features(batch)), targets[chunk].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return float(loss.detach())
