"""SSDML: semi-supervised deep metric learning by affinity propagation (Dutta, Harandi, Sekhar, AAAI 2021;
seed 002, spec ``specs/SSDML.md``).

Algorithm 1 with L in place of M, per partition p (all labeled items + ``n_unlabeled_partition``
random unlabeled ones; a new partition every ``epochs_per_partition`` epochs):

1. targets — embed the partition with the current network (z, l2-normalised, before L), build the
   kNN graph, propagate the labeled affinities ``W* = (1−γ)(I−γQ)⁻¹W⁰``, symmetrise, and mine k/2
   triplets per anchor from its sorted neighbourhood (:mod:`dmlkit.targets.propagation`).
2. loss — Eq. 3, the smooth angular triplet loss under ``δ_L`` (:mod:`dmlkit.losses.angular_triplet`).
3. step — per batch of T_b = 100 triplets: the L-step (θ fixed: Riemannian CG on St(d, l), 10
   iterations, warm-started) then the θ-step (L fixed: one optimizer step of the engine).
   ``alternate="per_epoch"`` / ``"per_partition"`` (spec §6 open choice) instead runs the L-step once
   at the start of each epoch / partition on all of the partition's triplets, with z embedded by the
   current θ, and every batch is a θ-step only.

**Batches.** :meth:`SSDML.batch_sampler` yields, for each batch of T_b triplets, the item indices
``[anchors (T_b) ; positives (T_b) ; negatives (T_b)]``; :meth:`SSDML.training_loss` splits the
embedded batch back into the three thirds. One epoch is one pass over the partition's triplets in a
random order (⌊|T_p| / T_b⌋ batches). The layout is single-process (DDP would slice the thirds): the
engine refuses devices > 1 for SSDML (:attr:`SSDML.single_process`).

The network is ``backbone → FC(out_dim → head_dim) → l2`` (``head_dim=0``: no FC, CIFAR-10) and the
test embedding is ``Lᵀz`` (:class:`dmlkit.models.OrthogonalProjection` holds L). CIFAR-10's softmax
pre-training on the labeled items (``pretrain_epochs``) runs as a stage at the first refresh.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dmlkit.data.base import DMLDataset
from dmlkit.data.seeding import seeded_generator
from dmlkit.losses.angular_triplet import angular_margins, angular_triplet_loss, metric_step
from dmlkit.losses.pretraining import softmax_pretraining
from dmlkit.methods.base import BuildInfo, Method, RefreshContext, build_method_backbone
from dmlkit.targets.propagation import knn_graph, mine_triplets, propagate, uncertified_pairs

L_SOLVERS = ("rcg", "retraction")
ALTERNATIONS = ("per_batch", "per_epoch", "per_partition")


@dataclass
class SSDMLConfig:
    """Paper defaults for MNIST / Fashion-MNIST (seed 002, "Implementation details"; spec §7, §11)."""

    backbone: str = "auto"  # methods.base.default_backbone; seed 002 by name: mnist-net, cifar-net, googlenet (FGVC)
    pretrained: str | None = "auto"  # ImageNet weights when on this machine (FGVC: ImageNet GoogLeNet); None: random
    bn_freeze: bool | None = None  # None: BatchNorm frozen exactly when the backbone is pretrained
    input_size: int | None = None  # side the backbone resizes to (None: its default)
    head_dim: int = 128  # FC(500 × 128) before the l2 layer; 0 = none (CIFAR-10 net ends in l2)
    embedding_dim: int = 64  # l: L(128 × 64) MNIST, 32 CIFAR-10, 128 FGVC
    gamma: float = 0.99  # γ of the affinity propagation (all datasets)
    k: int = 10  # kNN graph and mining neighbourhood (FGVC: 50)
    alpha_deg: float = 40.0  # α in Eq. 3 (FGVC: 45°)
    symmetrize: str = "transpose"  # (W* + W*ᵀ)/2; "literal" = the seed's printed (W*_ij + W*_ii)/2 (spec T1)
    knn_include_self: bool = False  # N_k excludes the node itself (spec §3 open choice)
    propagation: str = "auto"  # dense closed form if n ≤ dense_max, else "sparse_krylov" ("sparse_neumann" too; spec §9);
    # "partitioned": fast at n = 60,000 but approximate (docs/speed.md), never chosen by "auto"
    tol: float = 1e-6  # sparse solver's entrywise tolerance on W (spec §11)
    dense_max: int = 20_000  # largest partition solved densely (spec §9)
    part_size: int = 250  # "partitioned": core nodes per local solve (targets/propagation_parts.py)
    local_factor: float = 8.0  # "partitioned": nodes of each local system per core node
    reduction: str = "sum"  # Eq. 3 sums over the T_b triplets of a batch
    loss_form: str = "softplus"  # Eq. 3 as printed | "hinge": max(0, m_i), Wang et al.'s angular loss (a repair option)
    l_solver: str = "rcg"  # "rcg": Manopt-style Riemannian CG L-step per batch; "retraction": optimizer step + QR
    l_max_iter: int = 10  # Manopt CG max_iter per L-step (seed 002)
    alternate: str = "per_batch"  # L-step granularity (spec §6 open choice): per_batch | per_epoch | per_partition
    orthogonal: bool = True  # LᵀL = I; False = Table 4's "w/o orth" ablation
    n_unlabeled_partition: int = 9000  # random unlabeled items per partition; 0 = whole train set (FGVC)
    epochs_per_partition: int = 10  # "for each random subset, we run our method for 10 epochs"
    pretrain_epochs: int = 0  # softmax pre-training on the labeled items (CIFAR-10: 30)
    pretrain_lr: float = 1e-3  # Adam lr of that stage (not given in the seed)
    pretrain_batch_size: int = 100  # labeled images per pre-training batch (not given in the seed)


class SSDML(Method):
    """SSDML: propagated-affinity triplets and an angular loss under an orthonormal metric (AAAI 2021)."""

    name = "ssdml"
    uses_labels = "partial"
    Config = SSDMLConfig
    single_process = ("its batches are [anchors; positives; negatives] in thirds, which DDP would slice "
                      "between the ranks, and the L-step updates L per batch")
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 50,  # "a maximum of 50 epochs" (MNIST, Fashion-MNIST, CIFAR-10 after pre-training)
        "batch_size": 100,  # triplets per mini-batch (T_b)
        "lr": 1e-4,  # "initial learning rate 10⁻⁴"
        "weight_decay": 5e-4,  # spec §6 open choice (MatConvNet's SGD)
        "optimizer": "sgd",  # spec §6 open choice: SGD, momentum 0.9
        "scheduler": "constant",
    }

    def __init__(self, config: SSDMLConfig, info: BuildInfo) -> None:
        super().__init__()
        from dmlkit.data.views import Views
        from dmlkit.models import EmbeddingHead, OrthogonalProjection

        _validate(config)
        self.config = config
        self.info = info
        self.backbone = build_method_backbone(config.backbone, info, config.pretrained, config.bn_freeze,
                                              config.input_size, paper="googlenet")
        self.head = EmbeddingHead(self.backbone.out_dim, config.head_dim, init="default") if config.head_dim else nn.Identity()
        feature_dim = config.head_dim or self.backbone.out_dim
        self.projection = OrthogonalProjection(feature_dim, config.embedding_dim,
                                               generator=seeded_generator(0, feature_dim, config.embedding_dim))
        self.views = Views(info.views_preset, 1, augmentations=info.augmentations,
                           strength=info.view_strength)
        self.triplets: Tensor | None = None  # [T, 3] indices into the training split
        self.partition_number = 0  # partitions drawn so far
        self.epochs_on_partition = 0  # epochs trained on the current partition
        self.pretrained_done = config.pretrain_epochs == 0
        self.stats: dict[str, float] = {}

    # ------------------------------------------------------------------------------------ network
    def features(self, images: Tensor) -> Tensor:
        """z: the l2-normalised representation before L, ``[B, d]`` (the graph is built on it)."""
        return F.normalize(self.head(self.backbone(self.views.eval_transform(images))), dim=1)

    def embed(self, images: Tensor) -> Tensor:
        """Test embedding ``Lᵀz`` ``[B, l]``."""
        return self.projection(self.features(images))

    # ------------------------------------------------------------------------ quality of the targets
    def quality_embed(self, images: Tensor) -> Tensor:
        """z: the graph is built on it."""
        return self.features(images)

    def quality_estimators(self) -> dict:
        """``ssdml-triplets``: :class:`PropagatedTriplets` under this run's options."""
        return {"ssdml-triplets": PropagatedTriplets(self.config)}

    @classmethod
    def pseudo_supervision_estimators(cls, k: int = 10) -> dict:
        """``ssdml-triplets``: :class:`PropagatedTriplets` under the paper defaults, k = ``k`` (even: + 1 if odd)."""
        return {"ssdml-triplets": PropagatedTriplets(dataclasses.replace(SSDMLConfig(), k=k + k % 2))}

    # ----------------------------------------------------------------------------- targets (refresh)
    def refresh(self, context: RefreshContext) -> None:
        """Pre-train once if asked, then draw a new partition and mine it every ``epochs_per_partition``."""
        self.check_world_size(context.world_size)
        if not self.pretrained_done:
            self._softmax_pretraining(context)
            self.pretrained_done = True
        new_partition = self.triplets is None or self.epochs_on_partition >= self.config.epochs_per_partition
        if new_partition:
            self._mine_partition(context)
            self.partition_number += 1
            self.epochs_on_partition = 0
        self.epochs_on_partition += 1
        if self.config.l_solver == "rcg" and (
            self.config.alternate == "per_epoch" or (self.config.alternate == "per_partition" and new_partition)
        ):
            self._l_step_on_partition(context)

    def phase(self) -> str:
        """``pretraining`` (the softmax stage, done at the first refresh) or ``partition-<p>``."""
        return "pretraining" if not self.pretrained_done else f"partition-{self.partition_number}"

    def partition_nodes(self, labels: np.ndarray, seed: int) -> np.ndarray:
        """Indices of partition ``self.partition_number``: all labeled + a random unlabeled subset."""
        from dmlkit.data.samplers import make_partition

        if self.config.n_unlabeled_partition <= 0:
            return np.arange(len(labels))
        return make_partition(labels, self.config.n_unlabeled_partition, seed=(seed, self.partition_number))

    @torch.no_grad()
    def _mine_partition(self, context: RefreshContext) -> None:
        cfg = self.config
        start = time.perf_counter()
        labels = np.asarray(context.train.labels)
        nodes = self.partition_nodes(labels, context.seed)
        z = context.embed(self.features, dataset=context.train.subset(nodes))
        local, prop = mine_partition(cfg, z, torch.as_tensor(labels[nodes]), context.device)
        self.triplets = torch.as_tensor(nodes)[local]
        self.stats.update({
            "partition": float(self.partition_number), "nodes": float(len(nodes)), "triplets": float(len(local)),
            "uncertified_pairs": float(uncertified_pairs(prop.affinity, prop.tol)) if prop.solver.startswith("sparse") else 0.0,
            "mining_seconds": time.perf_counter() - start,
        })

    @torch.no_grad()
    def _l_step_on_partition(self, context: RefreshContext) -> None:
        """The L-step on every triplet of the partition at once (θ fixed: z from the current network)."""
        nodes, local = torch.unique(self.triplets, return_inverse=True)
        z = context.embed(self.features, dataset=context.train.subset(nodes.numpy())).to(self.projection.weight)
        self._l_step(z[local[:, 0]], z[local[:, 1]], z[local[:, 2]])

    @torch.no_grad()
    def _l_step(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> None:
        """L ← the Riemannian-CG minimiser of Eq. 3 over these triplets (:func:`metric_step`)."""
        cfg = self.config
        self.projection.weight.copy_(metric_step(anchor, positive, negative, self.projection.weight, cfg.alpha_deg,
                                                 cfg.reduction, cfg.l_max_iter, cfg.orthogonal, cfg.loss_form))

    def _softmax_pretraining(self, context: RefreshContext) -> None:
        """CIFAR-10 stage: the L layer replaced by a softmax classifier, trained on the labeled items."""
        cfg = self.config
        self.train()
        self.stats["pretrain_loss"] = softmax_pretraining(
            self.features, [p for module in (self.backbone, self.head) for p in module.parameters()],
            self.projection.in_dim, lambda idx: torch.stack([context.train.image(int(i)) for i in idx]),
            np.asarray(context.train.labels), epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr,
            batch_size=cfg.pretrain_batch_size, seed=context.seed, device=context.device)

    # ------------------------------------------------------------------------------------ batches
    def batch_sampler(self, dataset: DMLDataset, batch_size: int, seed: int, epoch: int) -> TripletBatchSampler:
        """Batches of ``batch_size`` triplets as ``[anchors; positives; negatives]`` index lists."""
        if self.triplets is None:  # before the first refresh: the count is known in advance
            n_nodes = len(self.partition_nodes(np.asarray(dataset.labels), seed))
            return TripletBatchSampler(None, batch_size, seed, epoch, expected=n_nodes * (self.config.k // 2))
        return TripletBatchSampler(self.triplets, batch_size, seed, epoch)

    # ------------------------------------------------------------------------------------ loss + step
    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images = batch["image"]
        if len(images) % 3:
            raise ValueError(f"SSDML batches hold anchors, positives and negatives in thirds; got {len(images)} images")
        anchor, positive, negative = self.features(images).chunk(3)
        cfg = self.config
        if cfg.l_solver == "rcg":
            if cfg.alternate == "per_batch":  # L-step: θ fixed (detached z), CG on St(d, l) warm-started at L
                self._l_step(anchor, positive, negative)
            L = self.projection.weight.detach()  # θ-step: L fixed
        else:
            L = self.projection.weight
        loss = angular_triplet_loss(anchor, positive, negative, L, cfg.alpha_deg, cfg.reduction, cfg.loss_form)  # Eq. 3
        with torch.no_grad():
            margins = angular_margins(anchor, positive, negative, L, cfg.alpha_deg)
        return {"loss": loss, "violations": (margins > 0).float().mean(),
                "orthogonality_error": torch.tensor(self.projection.orthogonality_error())}

    def before_optimizer_step(self) -> None:
        if self.config.l_solver == "retraction" and self.config.orthogonal:
            self.projection.project_gradient()

    def after_step(self) -> None:
        if self.config.l_solver == "retraction" and self.config.orthogonal:
            self.projection.retract()

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """θ at ``lr``; L joins the optimizer (without weight decay) only for ``l_solver="retraction"``."""
        theta = [p for module in (self.backbone, self.head) for p in module.parameters() if p.requires_grad]
        groups = [{"params": theta, "lr": lr, "weight_decay": weight_decay}]
        if self.config.l_solver == "retraction":
            groups.append({"params": [self.projection.weight], "lr": lr, "weight_decay": 0.0})
        return groups

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        state = {"partition_number": self.partition_number, "epochs_on_partition": self.epochs_on_partition,
                 "pretrained_done": self.pretrained_done}
        if self.triplets is not None:
            state["triplets"] = self.triplets
        return state

    def load_extra_state_from_checkpoint(self, state: dict[str, Any]) -> None:
        self.partition_number = int(state.get("partition_number", 0))
        self.epochs_on_partition = int(state.get("epochs_on_partition", 0))
        self.pretrained_done = bool(state.get("pretrained_done", self.pretrained_done))
        self.triplets = state.get("triplets")


def mine_partition(cfg: SSDMLConfig, z: Tensor, labels: Tensor, device: str | torch.device = "cpu"):
    """Algorithm 1's targets for one partition: kNN graph of ``z`` ``[n, d]``, the visible ``labels``
    ``[n]`` (−1 unlabeled) propagated over it, k/2 triplets mined per anchor -> ``(triplets [n·k/2, 3]
    local indices, Propagation)``."""
    graph = knn_graph(z.double(), cfg.k, include_self=cfg.knn_include_self)
    prop = propagate(graph, labels, cfg.gamma, cfg.symmetrize, cfg.propagation, cfg.tol, cfg.dense_max,
                     device=device, part_size=cfg.part_size, local_factor=cfg.local_factor)
    return mine_triplets(graph.neighbours, prop.affinity), prop


class PropagatedTriplets:
    """SSDML's pseudo-supervision as a :func:`dmlkit.evaluation.quality.quality_table` estimator: the
    items cut into seeded partitions of at most ``max_nodes`` (one if they fit), each mined by
    :func:`mine_partition` -> ``{"triplets": [T, 3]}`` item indices, scored as the fractions
    ``positive_same_class``, ``negative_same_class``, ``correct``. It reads the visible labels
    (``needs_labels``: a semi-supervised run's own, else a few revealed per class) and every item at once
    (``whole_set``: the method mines partitions, not batches). The dense propagation costs O(n³) per
    partition: ~6 s at 2,000 nodes on one core, hence ``max_nodes``."""

    needs_labels = True
    whole_set = True

    def __init__(self, config: SSDMLConfig, max_nodes: int = 2000, seed: int = 0) -> None:
        _validate(config)
        if max_nodes <= config.k:
            raise ValueError(f"max_nodes must exceed k = {config.k}, got {max_nodes}")
        self.config, self.max_nodes, self.seed = config, max_nodes, seed

    def __call__(self, z: Tensor, labels: Tensor) -> dict[str, Tensor]:
        n = len(z)
        parts = -(-n // self.max_nodes)
        order = torch.randperm(n, generator=seeded_generator(self.seed, n)) if parts > 1 else torch.arange(n)
        mined = []
        for nodes in order.tensor_split(parts):
            local, _ = mine_partition(self.config, z[nodes], torch.as_tensor(labels)[nodes])
            mined.append(nodes[local])
        return {"triplets": torch.cat(mined)}


class TripletBatchSampler:
    """One epoch over mined triplets: a random order, ⌊T / batch_size⌋ batches (one batch of all if
    T < batch_size), each yielded as ``anchors + positives + negatives`` (3·batch_size indices).

    Args:
        triplets: long ``[T, 3]`` (anchor, positive, negative) dataset indices, or None before mining.
        batch_size: triplets per batch (T_b).
        seed, epoch: randomness of the order.
        expected: T when ``triplets`` is None (only ``len`` is answered then).
    """

    def __init__(self, triplets: Tensor | None, batch_size: int, seed: int = 0, epoch: int = 0, expected: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size (triplets per batch) must be positive, got {batch_size}")
        self.triplets, self.batch_size, self.seed, self.epoch = triplets, batch_size, seed, epoch
        self.count = len(triplets) if triplets is not None else expected

    def __len__(self) -> int:
        return max(1, self.count // self.batch_size) if self.count else 0

    def __iter__(self) -> Iterator[list[int]]:
        if self.triplets is None:
            raise RuntimeError("SSDML has no triplets yet: the engine must call refresh() before iterating batches")
        order = torch.randperm(self.count, generator=seeded_generator(self.seed, self.epoch, 2021))
        size = min(self.batch_size, self.count)
        for chunk in order[: len(self) * size].view(len(self), size):
            yield self.triplets[chunk].T.reshape(-1).tolist()


def _validate(config: SSDMLConfig) -> None:
    if config.l_solver not in L_SOLVERS:
        raise ValueError(f"l_solver must be one of {L_SOLVERS}, got '{config.l_solver}'")
    if config.alternate not in ALTERNATIONS:
        raise ValueError(f"alternate must be one of {ALTERNATIONS}, got '{config.alternate}'")
    if config.alternate != "per_batch" and config.l_solver != "rcg":
        raise ValueError(f"alternate='{config.alternate}' schedules the rcg L-step; l_solver='{config.l_solver}' "
                         "moves L with the optimizer every batch (use alternate='per_batch')")
    if config.k < 2 or config.k % 2:
        raise ValueError(f"k must be an even number ≥ 2 (k/2 positives and k/2 negatives per anchor), got {config.k}")
    if config.epochs_per_partition < 1:
        raise ValueError(f"epochs_per_partition must be ≥ 1, got {config.epochs_per_partition}")
    if not 0.0 < config.gamma < 1.0:
        raise ValueError(f"gamma must lie in (0, 1), got {config.gamma}")
    if config.head_dim < 0 or config.embedding_dim < 1:
        raise ValueError(f"head_dim must be ≥ 0 and embedding_dim ≥ 1, got {config.head_dim}, {config.embedding_dim}")
    if not math.isfinite(config.alpha_deg) or not 0.0 < config.alpha_deg < 90.0:
        raise ValueError(f"alpha_deg must lie in (0, 90), got {config.alpha_deg}")
