"""DeepCluster (Caron, Bojanowski, Joulin, Douze, ECCV 2018) as an unsupervised DML baseline (issue 9).

At the start of every epoch the current L2-normalised embedding of the whole training split is
clustered with k-means (faiss); the cluster ids become pseudo labels and the network is trained on them
with a supervised classification loss for one epoch. As in DeepCluster, the classifier is re-initialised
at each re-clustering (cluster ids are arbitrary between two clusterings) and batches are drawn
uniformly over the pseudo classes, which stops a few large clusters from dominating. Ground-truth labels
are never read.

Per epoch / iteration::

    z_i = normalize(f(x_i)) for every training image              un-augmented, eval mode
    y_i, μ = k-means(z, n_clusters)                                DeepCluster Eq. 2 (faiss nearest-centroid search)
    W ~ N(0, 0.01²) (and b = 0)                                    fresh classifier
    per batch: L = CE(logits(normalize(f(aug(x)))), y)             DeepCluster Eq. 1 on pseudo labels
    logits = cos(z, w_c) / T   (normalized softmax, Zhai & Wu 2019; default)
           = W z + b          (plain linear classifier, ``loss="softmax"``)

At test time the embedding is the L2-normalised f.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit.data.seeding import seeded_generator
from dmlkit.methods.base import BuildInfo, Method, RefreshContext
from dmlkit.models.heads import l2_normalize
from dmlkit.targets.clusters import BACKENDS, kmeans_pseudo_labels

LOSSES = ("normalized_softmax", "softmax")
KMEANS_INITS = ("random", "k-means++")


@dataclass
class Config:
    """DeepCluster options; defaults follow the DeepCluster paper unless noted."""

    backbone: str = "auto"  # network under comparison (methods.base.default_backbone); presets pin mnist-net
    pretrained: str | None = "auto"  # ImageNet weights when on this machine; None: from scratch, as DeepCluster
    bn_freeze: bool | None = None  # None: BatchNorm frozen exactly when the backbone is pretrained
    input_size: int | None = None  # side the backbone resizes to (None: its default)
    embedding_dim: int = 128  # the linear embedding size of the other baselines on small images (SSDML's MNIST net)
    n_clusters: int = 100  # DeepCluster Sec. 4.1 (Fig. 3): over-segmentation wins (k = 10,000 for 1,000 ImageNet classes, 10x)
    kmeans_iters: int = 20  # DeepCluster code: 20 Lloyd iterations (stops earlier once assignments repeat)
    kmeans_init: str = "random"  # DeepCluster (faiss): k random training embeddings; "k-means++" seeds slower, often better
    kmeans_backend: str = "auto"  # DeepCluster clusters with faiss: "auto" uses it when installed, else "torch" (same labels)
    loss: str = "normalized_softmax"  # issue 9: normalized softmax (Zhai & Wu 2019); "softmax" = DeepCluster's linear layer
    temperature: float = 0.05  # normalized softmax temperature (Zhai & Wu 2019: 0.05)
    uniform_sampling: bool = True  # DeepCluster Sec. 3.3 (trivial parametrization): sample uniformly over the pseudo classes
    recluster_every_epochs: int = 1  # DeepCluster re-clusters once per epoch

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "n_clusters", "kmeans_iters", "recluster_every_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DeepCluster option {name} must be a positive integer, got {getattr(self, name)}")
        if self.n_clusters < 2:
            raise ValueError(f"DeepCluster needs n_clusters >= 2, got {self.n_clusters}")
        if self.kmeans_backend not in BACKENDS:
            raise ValueError(f"DeepCluster option kmeans_backend must be one of {', '.join(BACKENDS)}, got '{self.kmeans_backend}'")
        if self.kmeans_init not in KMEANS_INITS:
            raise ValueError(f"DeepCluster option kmeans_init must be one of {', '.join(KMEANS_INITS)}, got '{self.kmeans_init}'")
        if self.loss not in LOSSES:
            raise ValueError(f"DeepCluster option loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        if not self.temperature > 0:
            raise ValueError(f"DeepCluster option temperature must be positive, got {self.temperature}")


def uniform_cluster_batches(pseudo_labels: Tensor, batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """DeepCluster's uniform sampling over pseudo classes, cut into ``⌊N / batch_size⌋`` batches.

    Every non-empty cluster gets ``s = ⌈N / k⌉`` slots: its members in random order, cycled when the
    cluster has fewer than ``s`` (DeepCluster draws those with replacement). The ``k s`` slots are
    shuffled and the first N kept.

    Args:
        pseudo_labels: long ``[N]`` cluster id of every training item.
    Returns:
        batches of item indices (one batch of all N items when N < ``batch_size``).
    """
    n = pseudo_labels.shape[0]
    shuffled = torch.randperm(n, generator=gen)
    order = shuffled[torch.argsort(pseudo_labels[shuffled], stable=True)]  # grouped by cluster, random inside
    _, counts = torch.unique_consecutive(pseudo_labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    share = math.ceil(n / len(counts))
    cluster = torch.arange(len(counts)).repeat_interleave(share)  # the cluster of every slot
    rank = torch.arange(share).repeat(len(counts))  # the slot's rank inside its cluster
    items = order[starts[cluster] + rank % counts[cluster]]
    items = items[torch.randperm(len(items), generator=gen)][:n]
    if n < batch_size:
        return [items.tolist()]
    full = n // batch_size
    return items[: full * batch_size].view(full, batch_size).tolist()


class DeepCluster(Method):
    """DeepCluster: k-means pseudo labels on the embedding, re-clustered every epoch, classification loss (no labels)."""

    name: ClassVar[str] = "deepcluster"
    uses_labels: ClassVar[str] = "none"
    Config: ClassVar[type] = Config
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 500,  # DeepCluster Sec. 3.4: 500 epochs on ImageNet
        "batch_size": 256,  # DeepCluster Sec. 3.4
        "lr": 0.05,  # DeepCluster Sec. 3.4: SGD, lr 0.05, momentum 0.9
        "weight_decay": 1e-5,  # DeepCluster Sec. 3.4
        "optimizer": "sgd",
        "scheduler": "constant",
    }

    def __init__(self, config: Config, info: BuildInfo, network: nn.Module | None = None) -> None:
        """``network`` replaces backbone + embedding head (images -> ``[B, embedding_dim]``), e.g. in tests."""
        super().__init__()
        from dmlkit.data.views import Views

        self.config = config = config if config is not None else Config()
        self.network = network if network is not None else _embedding_network(config, info)
        self.views = Views(info.views_preset, 1, augmentations=info.augmentations,
                           strength=info.view_strength)  # DeepCluster trains on one random augmentation per image
        k, d = config.n_clusters, config.embedding_dim
        self.classifier_weight = nn.Parameter(torch.zeros(k, d))
        self.classifier_bias = nn.Parameter(torch.zeros(k)) if config.loss == "softmax" else None
        self.register_buffer("pseudo_labels", torch.full((max(info.num_train, 0),), -1, dtype=torch.long))
        self.register_buffer("clustered_epoch", torch.tensor(-1))
        self.reset_classifier(seeded_generator(0))

    # -- targets: k-means pseudo labels (DeepCluster Eq. 2) ----------------------------------------
    def refresh(self, context: RefreshContext) -> None:
        """Cluster the embedding of the training split and re-initialise the classifier.

        Skipped when this epoch is already clustered (a run resumed mid-epoch keeps its labels and
        classifier) and between re-clusterings (``recluster_every_epochs``).
        """
        c = self.config
        labelled = bool((self.pseudo_labels >= 0).all()) and len(self.pseudo_labels) == len(context.train)
        if labelled and (int(self.clustered_epoch) == context.epoch or context.epoch % c.recluster_every_epochs):
            return
        embeddings = context.embed(self.embed)
        if not 2 <= c.n_clusters <= len(embeddings):
            raise ValueError(f"DeepCluster needs 2 <= n_clusters <= training images, got {c.n_clusters} clusters for "
                             f"{len(embeddings)} images; lower the option n_clusters")
        gen = seeded_generator(context.seed, context.epoch, 1)
        init = "k-means++"
        if c.kmeans_init == "random":  # k distinct training items as the initial centroids
            init = embeddings[torch.randperm(len(embeddings), generator=gen)[: c.n_clusters]]
        labels, _ = kmeans_pseudo_labels(embeddings, c.n_clusters, init=init, seed=int(gen.initial_seed()),
                                         iters=c.kmeans_iters, backend=c.kmeans_backend)  # DeepCluster Eq. 2
        self.pseudo_labels = labels.to(self.classifier_weight.device)
        self.clustered_epoch.fill_(context.epoch)
        self.reset_classifier(seeded_generator(context.seed, context.epoch, 2))

    @torch.no_grad()
    def reset_classifier(self, gen: torch.Generator) -> None:
        """W ~ N(0, 0.01²), b = 0, in place (the optimizer keeps the same parameters), as DeepCluster's top layer."""
        weight = torch.randn(self.classifier_weight.shape, generator=gen) * 0.01
        self.classifier_weight.copy_(weight)
        if self.classifier_bias is not None:
            self.classifier_bias.zero_()

    def batch_sampler(self, dataset, batch_size: int, seed: int, epoch: int):
        """Batches uniform over pseudo classes (DeepCluster Sec. 3.3), or a plain random permutation."""
        if not self.config.uniform_sampling:
            return super().batch_sampler(dataset, batch_size, seed, epoch)
        if len(self.pseudo_labels) != len(dataset) or bool((self.pseudo_labels < 0).any()):
            raise RuntimeError("DeepCluster.batch_sampler needs the pseudo labels of this training split; "
                               "call refresh(context) first")
        return uniform_cluster_batches(self.pseudo_labels.cpu(), batch_size, seeded_generator(seed, epoch, 3))

    # -- loss and step (DeepCluster Eq. 1 on the pseudo labels) ------------------------------------
    def logits(self, z: Tensor) -> Tensor:
        """``[B, n_clusters]`` class scores of L2-normalised embeddings ``z [B, D]``."""
        if self.classifier_bias is None:
            return z @ l2_normalize(self.classifier_weight).T / self.config.temperature  # cos(z, w_c) / T
        return F.linear(z, self.classifier_weight, self.classifier_bias)

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Cross-entropy of one augmented view against the pseudo labels of its images."""
        index = batch["index"].to(self.pseudo_labels.device)
        known = len(self.pseudo_labels) > int(index.max())
        if not known or bool((self.pseudo_labels[index] < 0).any()):
            raise RuntimeError("DeepCluster has no pseudo labels for this batch; call refresh(context) first")
        z = l2_normalize(self.network(self.views(batch["image"])))
        targets = self.pseudo_labels[index].to(z.device)
        loss = F.cross_entropy(self.logits(z), targets)
        return {"loss": loss}

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalised embedding of the deterministic test-time view."""
        return l2_normalize(self.network(self.views.eval_transform(images)))

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Network at ``lr`` with weight decay; the classifier at ``lr`` without (it is reset every epoch)."""
        classifier = [p for p in (self.classifier_weight, self.classifier_bias) if p is not None]
        return [{"params": [p for p in self.network.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay},
                {"params": classifier, "lr": lr, "weight_decay": 0.0}]


def _embedding_network(config: Config, info: BuildInfo) -> nn.Module:
    """Backbone + linear embedding head (the method L2-normalises the output)."""
    from dmlkit.methods.reference import build_embedder

    backbone, head = build_embedder(config.backbone, config.embedding_dim, info, config.pretrained, normalize=False,
                                    bn_freeze=config.bn_freeze, input_size=config.input_size)
    return nn.Sequential(backbone, head)


__all__ = ["Config", "DeepCluster", "uniform_cluster_batches"]
