"""The five deep classical SSDML baselines: Deep-LRML, Deep-SERAPH, Deep-ISDML, Deep-APLLR and
Deep-APIT (seed 002, "Extending Classical SSDML to Deep SSDML", Algorithm 1; spec SSDML.md §8).

Algorithm 1 (stochastic extension)::

    every `epochs_per_partition` epochs: partition = all labeled + `n_unlabeled_partition` random
        unlabeled items; embed it (l2-normalised z, no grad); build the method's graph on it
    every epoch (APLLR, APIT): closed-form M-step on the whole partition
    every mini-batch (8 partition nodes with their 9 nearest graph neighbours + 2 labeled per class):
        M-step  — θ fixed, z detached: the method's own update of M ⪰ 0 (LRML, ISDML, SERAPH)
        θ-step  — M fixed: the method's objective on x = z M^{1/2}, backpropagated into the network

The metric is kept as M (buffer ``metric``) with its symmetric square root (buffer ``metric_sqrt``);
the test embedding is ``z M^{1/2}``, whose Euclidean distances are δ_M. Objectives and M-steps
live in :mod:`dmlkit.losses.classical`; the graph pieces shared with SSDML in
:mod:`dmlkit.targets.propagation`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from dmlkit.data.seeding import seeded_generator
from dmlkit.losses import classical as C
from dmlkit.methods.base import BuildInfo, Method, RefreshContext, build_method_backbone


@dataclass
class ClassicalConfig:
    """Options shared by the five baselines (seed 002 Implementation details; spec §7, §8)."""

    backbone: str = "auto"  # methods.base.default_backbone; the seed's nets by name: mnist-net / cifar-net (spec §2)
    embedding_dim: int | None = 128  # FC(500 x 128) -> l2 (seed, MNIST net); None: no FC (CIFAR net: 64-d -> l2)
    pretrained: str | None = "auto"  # ImageNet weights when on this machine (seed: MNIST/Fashion random init)
    bn_freeze: bool | None = None  # None: BatchNorm frozen exactly when the backbone is pretrained
    input_size: int | None = None  # side the backbone resizes to (None: its default)
    k: int = 10  # kNN graph size (seed: k = 10; FGVC 50)
    n_unlabeled_partition: int = 9000  # random unlabeled items per partition (seed: 9k); 0 = whole split (FGVC)
    epochs_per_partition: int = 10  # epochs on one partition (seed: 10)
    group_size: int = 10  # batch: a partition node and its 9 nearest graph neighbours (spec §8 open choice)
    labeled_per_batch: int = 20  # labeled nodes in every batch (spec §8 open choice)
    labeled_per_class: int = 2  # ... 2 per class (FGVC: 1 each from 20 random classes)


class _StochasticBaseline(Method):
    """Algorithm 1 of seed 002 for a learned M ⪰ 0; subclasses supply the graph, the M-steps and
    the θ-step objective."""

    uses_labels = "partial"
    Config: ClassVar[type] = ClassicalConfig
    single_process: ClassVar[str | None] = (
        "its batches are graph groups followed by labeled items, which DDP would slice between the ranks, "
        "and the M-step updates the metric M per batch")
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 50,  # seed: 10 epochs per partition, 50 max
        "batch_size": 100,  # spec §8: 8 groups of 10 + 20 labeled
        "lr": 1e-4,  # seed: initial learning rate 1e-4
        "weight_decay": 5e-4,  # spec §6 open choice (SGD, momentum 0.9)
        "optimizer": "sgd",  # Algorithm 1: "learn θ by backpropagation using SGD"
        "scheduler": "constant",
    }
    #: whether the method builds a graph on the partition (SERAPH does not)
    builds_graph: ClassVar[bool] = True
    #: whether the M-step needs the whole partition re-embedded every epoch (APLLR, APIT)
    epoch_metric_step: ClassVar[bool] = False

    def __init__(self, config: ClassicalConfig, info: BuildInfo) -> None:
        super().__init__()
        self.config = config or self.Config()
        self._check_config()
        self.backbone, self.head = _build_network(self.config, info)
        from dmlkit.data.views import Views

        self.views = Views(info.views_preset, 1, augmentations=info.augmentations,
                           strength=info.view_strength)
        dim = self.head.out_dim if self.head is not None else self.backbone.out_dim
        self.register_buffer("metric", torch.eye(dim))  # M, initialised to I (spec §8)
        self.register_buffer("metric_sqrt", torch.eye(dim))  # M^{1/2}
        self._partition_id: int | None = None
        self._nodes = np.zeros(0, dtype=np.int64)  # dataset indices of the partition nodes
        self._node_labels = torch.zeros(0, dtype=torch.long)
        self._lookup = torch.zeros(0, dtype=torch.long)  # dataset index -> partition position (-1: outside)
        self._neighbours: Tensor | None = None  # [n, k] partition kNN (positions), None without a graph
        self._edges = torch.zeros(0, 2, dtype=torch.long)  # partition edges i < j (positions), sorted
        self._edge_weights = torch.zeros(0)

    def _check_config(self) -> None:
        c = self.config
        for name in ("k", "epochs_per_partition", "group_size", "labeled_per_class"):
            if getattr(c, name) < 1:
                raise ValueError(f"{self.name}: option {name} must be >= 1, got {getattr(c, name)}")
        if c.labeled_per_batch < 0 or c.n_unlabeled_partition < 0:
            raise ValueError(f"{self.name}: labeled_per_batch and n_unlabeled_partition must be >= 0")

    # ------------------------------------------------------------------ network and metric
    def features(self, images: Tensor) -> Tensor:
        """The l2-normalised representation z ``[B, d]`` (before the metric; the graph is built on it)."""
        h = self.backbone(self.views.eval_transform(images))
        return self.head(h) if self.head is not None else nn.functional.normalize(h, dim=1)

    def embed(self, images: Tensor) -> Tensor:
        """Test embedding ``z M^{1/2}`` ``[B, d]``: its Euclidean distances are δ_M."""
        return self.features(images) @ self.metric_sqrt

    def set_metric(self, metric: Tensor) -> None:
        """Install a new M (symmetrised) and its square root."""
        metric = (metric + metric.T) / 2
        self.metric.copy_(metric.to(self.metric))
        self.metric_sqrt.copy_(C.matrix_sqrt(metric).to(self.metric))

    # ------------------------------------------------------------------ Algorithm 1
    def refresh(self, context: RefreshContext) -> None:
        """New partition and graph every ``epochs_per_partition`` epochs; per-epoch M-step if any."""
        from dmlkit.data.samplers import make_partition

        self.check_world_size(context.world_size)
        partition = context.epoch // self.config.epochs_per_partition
        labels = np.asarray(context.train.labels)
        fresh = partition != self._partition_id
        if fresh:
            self._nodes = make_partition(labels, _unlabeled_per_partition(self.config, labels), seed=(context.seed, partition))
            self._node_labels = torch.as_tensor(labels[self._nodes])
            self._lookup = torch.full((len(labels),), -1, dtype=torch.long)
            self._lookup[torch.as_tensor(self._nodes)] = torch.arange(len(self._nodes))
            self._partition_id = partition
        if not ((fresh and self.builds_graph) or self.epoch_metric_step):
            return
        z = context.embed(self.features, context.train.subset(self._nodes)).float()
        if fresh and self.builds_graph:
            self._neighbours, self._edges, self._edge_weights = self.build_graph(z.to(context.device), self._node_labels, context)
            self.start_partition()
        if self.epoch_metric_step:
            with torch.no_grad():
                self.partition_metric_step(z.to(self.metric.device), self._node_labels.to(self.metric.device))

    def build_graph(self, z: Tensor, labels: Tensor, context: RefreshContext) -> tuple[Tensor, Tensor, Tensor]:
        """``(neighbours [n, k], edges [E, 2] i < j, weights [E])`` of the partition (CPU)."""
        raise NotImplementedError

    def start_partition(self) -> None:
        """Reset per-partition M-step state."""

    def partition_metric_step(self, z: Tensor, labels: Tensor) -> None:
        """Closed-form M-step on the whole partition (APLLR, APIT), once per epoch."""

    def batch_metric_step(self, z: Tensor, labels: Tensor, edges: Tensor, weights: Tensor) -> None:
        """M-step on one batch, θ fixed (Alg. 1 line 3)."""

    def objective(self, x: Tensor, labels: Tensor, edges: Tensor, weights: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """M-step on the detached batch, then the θ-step objective on ``x = z M^{1/2}``."""
        if self._partition_id is None:
            raise RuntimeError(f"{self.name}: refresh() must run before training (it builds the partition)")
        local = self._lookup[batch["index"].cpu()]
        if (local < 0).any():
            raise ValueError(f"{self.name}: batch items outside the current partition; use the method's batch_sampler")
        labels = batch["label"]
        z = self.features(batch["image"])
        edges, weights = self._batch_edges(local)
        edges, weights = edges.to(z.device), weights.to(z.device, z.dtype)
        with torch.no_grad():
            self.batch_metric_step(z.detach(), labels, edges, weights)
        return self.objective(z @ self.metric_sqrt, labels, edges, weights)

    def _batch_edges(self, local: Tensor) -> tuple[Tensor, Tensor]:
        """Partition-graph edges ``E_B`` among the batch members, as batch positions ``i < j``."""
        if len(self._edges) == 0:
            return torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)
        n = len(self._nodes)
        i, j = torch.triu_indices(len(local), len(local), 1)
        a, b = local[i], local[j]
        keys = torch.minimum(a, b) * n + torch.maximum(a, b)
        graph_keys = self._edges[:, 0] * n + self._edges[:, 1]
        pos = torch.searchsorted(graph_keys, keys).clamp_max(len(graph_keys) - 1)
        hit = (graph_keys[pos] == keys) & (a != b)
        return torch.stack([i[hit], j[hit]], dim=1), self._edge_weights[pos[hit]].float()

    def batch_sampler(self, dataset, batch_size: int, seed: int, epoch: int) -> _PartitionBatches:
        return _PartitionBatches(self, np.asarray(dataset.labels), batch_size, seed, epoch)


class _PartitionBatches:
    """Batches of one epoch over the current partition (spec §8 open choice): ``groups`` random
    partition nodes, each followed by its ``group_size − 1`` nearest graph neighbours, plus
    ``labeled_per_class`` labeled nodes from each of ``labeled_per_batch / labeled_per_class``
    random classes; duplicates dropped. ``⌊n_partition / batch_size⌋`` batches per epoch.
    The partition is read when iteration starts (after the engine's ``refresh``)."""

    def __init__(self, method: _StochasticBaseline, labels: np.ndarray, batch_size: int, seed: int, epoch: int) -> None:
        c = method.config
        self.method, self.seed, self.epoch = method, seed, epoch
        self.groups = (batch_size - c.labeled_per_batch) // c.group_size
        if self.groups < 1:
            raise ValueError(f"{method.name}: batch_size {batch_size} leaves no room for a group of {c.group_size} "
                             f"after {c.labeled_per_batch} labeled items; raise batch_size or lower labeled_per_batch")
        n_labeled = int((labels >= 0).sum())
        n_partition = n_labeled + min(_unlabeled_per_partition(c, labels), len(labels) - n_labeled)
        self.num_batches = max(1, n_partition // batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        m, c = self.method, self.method.config
        if m._partition_id is None:
            raise RuntimeError(f"{m.name}: the batch sampler needs refresh() to have built the partition first")
        gen = seeded_generator(self.seed, self.epoch, 8191)
        n, count = len(m._nodes), self.num_batches * self.groups
        seeds = (torch.randperm(n, generator=gen)[:count] if count <= n else torch.randint(n, (count,), generator=gen))
        members = seeds[:, None]
        if c.group_size > 1:
            if m._neighbours is None or m._neighbours.shape[1] < c.group_size - 1:
                raise ValueError(f"{m.name}: group_size {c.group_size} needs a graph with >= {c.group_size - 1} "
                                 "neighbours; lower group_size (1 = no graph) or raise k")
            members = torch.cat([members, m._neighbours[seeds, : c.group_size - 1]], dim=1)
        members = members.view(self.num_batches, -1)
        labeled = self._labeled_picks(gen)
        for b in range(self.num_batches):
            local = torch.cat([members[b], labeled[b]]).numpy()
            _, first = np.unique(local, return_index=True)
            yield m._nodes[local[np.sort(first)]].tolist()

    def _labeled_picks(self, gen: torch.Generator) -> list[Tensor]:
        """Per batch: ``labeled_per_class`` random labeled nodes of each of some random classes."""
        m, c = self.method, self.method.config
        labels = m._node_labels
        labeled = (labels >= 0).nonzero().squeeze(1)
        if c.labeled_per_batch == 0 or len(labeled) == 0:
            return [torch.zeros(0, dtype=torch.long)] * self.num_batches
        classes, cls = torch.unique(labels[labeled], return_inverse=True)
        n_classes = max(1, min(len(classes), c.labeled_per_batch // c.labeled_per_class))
        chosen_rank = torch.argsort(torch.rand(self.num_batches, len(classes), generator=gen), dim=1).argsort(dim=1)
        key = cls[None, :] + torch.rand(self.num_batches, len(labeled), generator=gen)  # class, then random
        order = torch.argsort(key, dim=1)
        starts = torch.searchsorted(cls.sort().values, torch.arange(len(classes)))
        rank_in_class = torch.empty_like(order)
        rank_in_class.scatter_(1, order, torch.arange(len(labeled)).expand_as(order) - starts[cls[order]])
        keep = (rank_in_class < c.labeled_per_class) & (chosen_rank[:, cls] < n_classes)
        return [labeled[keep[b]] for b in range(self.num_batches)]


def _unlabeled_per_partition(config: ClassicalConfig, labels: np.ndarray) -> int:
    """Unlabeled items per partition; ``n_unlabeled_partition = 0`` takes them all (FGVC: no partition)."""
    return config.n_unlabeled_partition if config.n_unlabeled_partition > 0 else len(labels)


def _build_network(config: ClassicalConfig, info: BuildInfo) -> tuple[nn.Module, nn.Module | None]:
    """SSDML's network up to the l2 layer: backbone, then FC(out_dim x embedding_dim) + l2 (or l2 only)."""
    from dmlkit.models.heads import EmbeddingHead

    net = build_method_backbone(config.backbone, info, config.pretrained, config.bn_freeze, config.input_size)
    if config.embedding_dim is None:
        return net, None
    return net, EmbeddingHead(net.out_dim, config.embedding_dim, normalize=True, init="default")


# ====================================================================== the five methods
@dataclass
class LRMLConfig(ClassicalConfig):
    gamma_s: float = 1.0  # γ_S, weight of the similar-pair term (spec §8)
    gamma_d: float = 1.0  # γ_D, weight of the dissimilar-pair term (spec §8)
    scatter_momentum: float = 0.9  # EMA of C over batches, reset per partition (spec §8)
    eigen_floor: float = 1e-3  # C's eigenvalues clipped at eigen_floor · mean|λ| (spec §8: 1e-3 tr(C)/d)


class DeepLRML(_StochasticBaseline):
    """Deep-LRML: similar/dissimilar labeled pairs + heat-kernel graph Laplacian (Hoi et al. 2010)."""

    name = "deep-lrml"
    Config = LRMLConfig
    _scatter: Tensor | None = None  # EMA of the batch scatter C, reset per partition

    def build_graph(self, z, labels, context):
        from dmlkit.targets.propagation import knn_graph

        graph = knn_graph(z, self.config.k)
        edges, weights = C.undirected_edges(graph.neighbours, C.heat_kernel_weights(graph.distances.float()), "mean")
        return graph.neighbours, edges, weights

    def start_partition(self) -> None:
        self._scatter = None

    def batch_metric_step(self, z, labels, edges, weights) -> None:
        c = self.config
        batch = C.lrml_scatter(z.double(), labels, edges, weights.double(), c.gamma_s, c.gamma_d)
        prev = self._scatter
        self._scatter = batch if prev is None else c.scatter_momentum * prev + (1 - c.scatter_momentum) * batch
        self.set_metric(C.lrml_metric_step(self._scatter, c.eigen_floor))

    def objective(self, x, labels, edges, weights):
        return C.lrml_loss(x, labels, edges, weights, self.config.gamma_s, self.config.gamma_d)


class DeepISDML(DeepLRML):
    """Deep-ISDML: LRML's terms with a density-weighted graph Laplacian (Ying et al. 2017)."""

    name = "deep-isdml"

    def build_graph(self, z, labels, context):
        from dmlkit.targets.propagation import knn_graph

        graph = knn_graph(z, self.config.k)
        sq = graph.distances.float()
        sigma = C.isdml_bandwidth(z, sq[:, 0])
        edges, weights = C.undirected_edges(graph.neighbours, C.density_graph_weights(sq, sigma), "half_sum")
        return graph.neighbours, edges, weights

    def objective(self, x, labels, edges, weights):
        return C.isdml_loss(x, labels, edges, weights, self.config.gamma_s, self.config.gamma_d)


@dataclass
class SERAPHConfig(ClassicalConfig):
    eta: float = 1.0  # η, the pair model's distance threshold (spec §8 open choice)
    mu: float = 1.0  # μ, weight of the unlabeled entropy (seed T3; spec §8)
    trace_weight: float = 1e-3  # λ of λ tr(M) (spec §8)
    metric_lr: float = 1e-2  # step of the projected-gradient M-step (open choice)
    metric_steps: int = 10  # projected-gradient steps per batch (spec §8)
    group_size: int = 1  # SERAPH builds no graph: 80 random partition nodes + 20 labeled


class DeepSERAPH(_StochasticBaseline):
    """Deep-SERAPH: labeled pair likelihood + unlabeled pair entropy minimisation (Niu et al. 2014)."""

    name = "deep-seraph"
    Config = SERAPHConfig
    builds_graph = False

    def batch_metric_step(self, z, labels, edges, weights) -> None:
        c = self.config
        self.set_metric(C.seraph_metric_step(z, labels, self.metric, c.eta, c.mu, c.trace_weight, c.metric_lr, c.metric_steps))

    def objective(self, x, labels, edges, weights):
        return C.seraph_loss(x, labels, self.config.eta, self.config.mu)


@dataclass
class APConfig(ClassicalConfig):
    gamma: float = 0.99  # propagation weight γ (seed: 0.99)
    symmetrize: str = "transpose"  # W = (W* + W*ᵀ)/2 (spec T1)
    solver: str = "auto"  # propagation solver (spec §9: dense for n <= 20,000)
    lam: float = 1.0  # λ of D_ld(M, M_0) + λ tr(M C_W) (spec §8)
    ridge: float = 1e-3  # ridge on the prior before inverting (spec §8)
    eigen_floor: float = 1e-3  # eigenvalue clip before the final inverse (spec §8)


class _AffinityPropagationBaseline(_StochasticBaseline):
    """APLLR/APIT (Dutta & Sekhar 2018): prior M_0 from labeled pairs, closed-form M with the
    propagated affinities, θ-step on the signed affinity Laplacian."""

    Config = APConfig
    epoch_metric_step = True

    def build_graph(self, z, labels, context):
        from dmlkit.targets.propagation import knn_graph, propagate

        c = self.config
        graph = knn_graph(z, c.k)
        prop = propagate(graph, labels, gamma=c.gamma, symmetrize=c.symmetrize, solver=c.solver, device=context.device)
        edges, weights = C.undirected_edges(graph.neighbours, prop.affinity, "mean")
        return graph.neighbours, edges, weights

    def prior(self, z: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def partition_metric_step(self, z, labels) -> None:
        c = self.config
        labeled = labels >= 0
        prior = self.prior(z[labeled], labels[labeled])
        scatter = C.affinity_scatter(z.double(), self._edges.to(z.device), self._edge_weights.to(z.device).double())
        self.set_metric(C.affinity_metric_step(prior, scatter, c.lam, c.ridge, c.eigen_floor))

    def objective(self, x, labels, edges, weights):
        return C.affinity_laplacian_loss(x, edges, weights)


class DeepAPLLR(_AffinityPropagationBaseline):
    """Deep-APLLR: log-likelihood-ratio (KISSME) prior + affinity propagation (Dutta & Sekhar 2018)."""

    name = "deep-apllr"

    def prior(self, z, labels):
        return C.kissme_prior(z, labels, self.config.ridge)


@dataclass
class APITConfig(APConfig):
    itml_slack: float = 1.0  # ITML slack γ (spec §8)
    itml_sweeps: int = 10  # passes over the constraints (spec §8)
    itml_constraints_per_class_pair: int = 40  # at most 40·C² labeled pairs (ITML's code default)


class DeepAPIT(_AffinityPropagationBaseline):
    """Deep-APIT: information-theoretic (ITML) prior + affinity propagation (Dutta & Sekhar 2018)."""

    name = "deep-apit"
    Config = APITConfig

    def prior(self, z, labels):
        c = self.config
        n_classes = len(torch.unique(labels))
        gen = seeded_generator(0, self._partition_id or 0)
        return C.itml_prior(z, labels, c.itml_slack, c.itml_sweeps, c.itml_constraints_per_class_pair * n_classes ** 2,
                            generator=gen)
