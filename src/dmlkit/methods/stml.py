"""STML: Self-Taught Metric Learning without Labels (Kim, Kim, Cho, Kwak, CVPR 2022). Spec: STML.md.

An EMA teacher gives every pair of a mini-batch a soft pseudo label w_ij (the contextualized semantic
similarity, :mod:`dmlkit.targets.contextual`); the student's two heads learn it with the relaxed
contrastive loss, and a KL term distils the auxiliary head g into the target head f
(:mod:`dmlkit.losses.relaxed_contrastive`). Batches are nearest-neighbour groups recomputed every epoch;
every image appears as two augmented views. Ground-truth labels are never read.

Per iteration (spec §3-§6)::

    x = [view 1 of the b images ; view 2]                   n = 2b rows, idx repeated in that order
    W = contextual_similarity(teacher_g(x), idx)             Eq. 2-5, no grad, computed once
    L = ½ L_RC(f(x); W) + ½ L_RC(g(x); W) + L_KL(f || g)     Eq. 6-8
    backward; EMA teacher ← m·teacher + (1-m)·student        before the optimizer step (official order)

At test time the embedding is the raw f.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dmlkit.data.samplers import QUERY_DRAWS
from dmlkit.losses.relaxed_contrastive import (
    NORMALISERS,
    kl_from_distances,
    normalised_distances,
    relaxed_contrastive_from_distances,
)
from dmlkit.methods.base import BuildInfo, Method, RefreshContext, build_method_backbone, default_backbone
from dmlkit.targets.contextual import TIE_BREAKS, contextual_similarity, default_qe_size

#: Inception backbones train on 227-px crops (spec §3.3); others keep the views preset's 224
INCEPTION_BACKBONES = ("googlenet", "bn-inception")


@dataclass
class Config:
    """STML options; defaults are the paper's CUB/Cars setting (spec §7, §9) unless noted."""

    backbone: str | None = None  # None/"auto": methods.base.default_backbone (spec §2: googlenet by name, as the presets)
    pretrained: str | None = "auto"  # "auto": ImageNet weights when on this machine (spec §2), else random; None = random; or a file
    bn_freeze: bool | None = None  # None: every backbone BatchNorm frozen iff pretrained (official BN-Inception runs, spec §2)
    input_size: int | None = None  # side the backbone resizes to (None: its default)
    embedding_dim: int = 512  # f head, `embedding_size` (spec §7 table: 512; Fig. 'stml_recall' sweeps 32-1024)
    g_dim: int = 1024  # auxiliary head g, `bg_embedding_size` (spec §2); smaller is fine for small networks
    sigma: float = 3.0  # Gaussian bandwidth of w^P (README value, spec §4.1)
    delta: float = 1.0  # RC margin on normalised distances (1 CUB/Cars, 0.9 SOP; spec §7)
    group_size: int = 5  # NN-group size K of the batches (5 CUB/Cars, 2 SOP; spec §7)
    views: int = 2  # augmented views per image (spec §3)
    k: int | None = None  # k-reciprocal neighbourhood; None = group_size * views (spec §4)
    qe_size: int | None = None  # query-expansion neighbours; None = round_half_even(k/2) (spec §4.5)
    momentum: float = 0.999  # teacher momentum (0.999 CUB/Cars, 0.9 SOP; spec §6-7)
    ema_before_step: bool = True  # EMA after backward and before optimizer.step, as the official code (spec §6)
    nn_source: str = "student_g"  # network that builds the NN batches: "student_g" (code) | "teacher_g" (spec §3)
    student_norm: bool = False  # L2-normalise student outputs before distances (official default off, spec §5)
    teacher_norm: bool = True  # L2-normalise teacher outputs inside the similarity (spec §4)
    rc_normaliser: str = "n(n-1)"  # official STML; "n" as in the original relaxed contrastive loss (spec §5)
    kl_temperature: float = 1.0  # softmax temperature of self-distillation (spec §5)
    rc_weight_f: float = 0.5  # weight of L_RC(f) (spec §5 total: ½[L_RC(f) + L_RC(g)] + L_KL)
    rc_weight_g: float = 0.5  # weight of L_RC(g)
    kl_weight: float = 1.0  # weight of L_KL
    tie_break: str = "stable_index"  # top-k order among ties: (-value, self first, column) | "torch_topk" (spec §4)
    # code/dataset/sampler.py L142-147: distinct within a batch, with replacement across batches
    query_sampling: str = "per_batch"  # each batch draws its b/K queries anew | "permutation": once per epoch
    refresh_nn_every_epochs: int = 1  # rebuild the NN table every this many epochs (official: every epoch)
    emb_lr: float | None = None  # learning rate of the heads f and g; None = the backbone lr (SOP README: 1e-2)

    def __post_init__(self) -> None:
        positive = {"embedding_dim": self.embedding_dim, "g_dim": self.g_dim, "group_size": self.group_size,
                    "views": self.views, "sigma": self.sigma, "kl_temperature": self.kl_temperature,
                    "refresh_nn_every_epochs": self.refresh_nn_every_epochs}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"STML option {name} must be positive, got {value}")
        if self.views < 2:
            raise ValueError(f"STML needs at least 2 views per image (views={self.views}); the paper uses 2")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {self.momentum}")
        if self.nn_source not in ("student_g", "teacher_g"):
            raise ValueError(f"nn_source must be 'student_g' or 'teacher_g', got '{self.nn_source}'")
        if self.rc_normaliser not in NORMALISERS:
            raise ValueError(f"rc_normaliser must be one of {NORMALISERS}, got '{self.rc_normaliser}'")
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got '{self.tie_break}'")
        if self.query_sampling not in QUERY_DRAWS:
            raise ValueError(f"query_sampling must be one of {QUERY_DRAWS}, got '{self.query_sampling}'")

    @property
    def neighbourhood(self) -> int:
        """k of the k-reciprocal sets."""
        return self.k if self.k is not None else self.group_size * self.views

    @property
    def expansion(self) -> int:
        """Number of query-expansion neighbours."""
        return self.qe_size if self.qe_size is not None else default_qe_size(self.neighbourhood)


class _Tower(nn.Module):
    """Backbone + one linear head; the teacher is a tower, and so is the student's (backbone, g) pair."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


class STML(Method):
    """STML: EMA teacher, contextualized similarity pseudo labels, relaxed contrastive + self-distillation (no labels)."""

    name: ClassVar[str] = "stml"
    uses_labels: ClassVar[str] = "none"
    Config: ClassVar[type] = Config
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 90,  # spec §7 (CUB/Cars/SOP)
        "batch_size": 120,  # b = 120 images, n = 240 rows (spec §7)
        "lr": 1e-4,  # backbone lr (spec §7)
        "weight_decay": 1e-2,  # decoupled weight decay of AdamP (spec §7)
        "optimizer": "adamp",  # AdamP with Nesterov (spec §7)
        "scheduler": "cosine",  # cosine over the epochs, stepped per epoch (spec §7)
    }
    #: one name per choice across methods: NN-group size as PLM's and the classical baselines' group_size,
    #: EMA teacher momentum as PLM's and instance discrimination's momentum
    renamed_options: ClassVar[dict[str, str]] = {"num_neighbors": "group_size", "ema_m": "momentum"}

    def __init__(self, config: Config, info: BuildInfo,
                 backbone_factory: Callable[[], nn.Module] | None = None) -> None:
        """Build student (backbone, g, f) and teacher (backbone, g).

        ``backbone_factory`` (optional) returns a fresh backbone with attribute ``out_dim``; it is called
        twice (student, teacher). Default: ``dmlkit.models.build_backbone`` with ``config.backbone``.
        """
        super().__init__()
        self.config = config = config if config is not None else Config()
        self.info = info
        from dmlkit.data.views import Views
        from dmlkit.models.heads import EmbeddingHead

        auto = config.backbone in (None, "auto")
        self.backbone_name = default_backbone(info, "googlenet") if auto else config.backbone
        if backbone_factory is None:
            def backbone_factory() -> nn.Module:
                return build_method_backbone(self.backbone_name, info, config.pretrained, config.bn_freeze,
                                             config.input_size)
        student_backbone, teacher_backbone = backbone_factory(), backbone_factory()
        if config.bn_freeze:  # also for a custom factory; frozen layers stay frozen
            from dmlkit.models.batchnorm import frozen_batchnorm

            student_backbone, teacher_backbone = frozen_batchnorm(student_backbone), frozen_batchnorm(teacher_backbone)
        feature_dim = int(student_backbone.out_dim)
        # spec §2: linear heads, orthogonal init, zero bias, outputs not normalised
        self.student = _Tower(student_backbone, EmbeddingHead(feature_dim, config.g_dim, normalize=False, init="orthogonal"))
        self.f = EmbeddingHead(feature_dim, config.embedding_dim, normalize=False, init="orthogonal")
        # spec §2: a separate teacher (same pretrained weights, its own random g init), no grad, eval mode
        self.teacher = _Tower(teacher_backbone, EmbeddingHead(feature_dim, config.g_dim, normalize=False, init="orthogonal"))
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        crop = 227 if info.views_preset == "imagenet224" and self.backbone_name in INCEPTION_BACKBONES else None
        self.views = Views(info.views_preset, config.views, crop_size=crop, augmentations=info.augmentations,
                           strength=info.view_strength)
        self.neighbours: Tensor | None = None

    def train(self, mode: bool = True) -> STML:
        """The teacher always stays in eval mode (spec §2)."""
        super().train(mode)
        self.teacher.eval()
        return self

    # -- refresh: nearest-neighbour groups (spec §3.1) ----------------------------------------------
    def refresh(self, context: RefreshContext) -> None:
        """Embed the train split (un-augmented, eval mode) with ``nn_source`` and rebuild the K-NN table."""
        if self.neighbours is not None and context.epoch % self.config.refresh_nn_every_epochs:
            return
        tower = self.student if self.config.nn_source == "student_g" else self.teacher
        embeddings = context.embed(lambda images: tower(self.views.eval_transform(images)))
        _, self.neighbours = context.knn(embeddings, self.config.group_size)
        self.neighbours = self.neighbours.long().cpu()

    def batch_sampler(self, dataset, batch_size: int, seed: int, epoch: int):
        """b/K random queries per batch, each followed by its K-1 nearest neighbours (spec §3.2); the
        queries are drawn per batch (official) or as one permutation per epoch (``query_sampling``)."""
        from dmlkit.data.samplers import NeighbourGroupSampler

        if self.neighbours is None:
            raise RuntimeError("STML.batch_sampler needs the neighbour table; call refresh(context) first")
        if len(self.neighbours) != len(dataset):
            raise RuntimeError(f"STML neighbour table has {len(self.neighbours)} rows but the dataset has "
                               f"{len(dataset)} items; refresh on the same training split")
        return NeighbourGroupSampler(self.neighbours, batch_size, seed=seed, epoch=epoch, queries=self.config.query_sampling)

    # -- one iteration (spec §3.3-§5) --------------------------------------------------------------
    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Two views, pseudo labels W from the teacher (once), RC on f and g, KL from g to f."""
        c = self.config
        x = self.views(batch["image"])  # [view 1 of all b ; view 2 of all b]
        idx = batch["index"].to(x.device).repeat(c.views)
        with torch.no_grad():
            W = contextual_similarity(self.teacher(x), idx, c.neighbourhood, c.sigma, c.expansion,
                                      normalize=c.teacher_norm, tie_break=c.tie_break)  # Eq. 2-5
        features = self.student.backbone(x)
        g, f = self.student.head(features), self.f(features)
        dist_f = normalised_distances(f, c.student_norm)
        dist_g = normalised_distances(g, c.student_norm)
        rc_f = relaxed_contrastive_from_distances(dist_f, W, c.delta, c.rc_normaliser)  # Eq. 6 on f
        rc_g = relaxed_contrastive_from_distances(dist_g, W, c.delta, c.rc_normaliser)  # Eq. 6 on g
        kl = kl_from_distances(dist_f, dist_g.detach(), c.kl_temperature)  # Eq. 7, g is the target
        loss = c.rc_weight_f * rc_f + c.rc_weight_g * rc_g + c.kl_weight * kl  # Eq. 8
        return {"loss": loss, "rc_f": rc_f.detach(), "rc_g": rc_g.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def update_teacher(self) -> None:
        """θ_t ← m θ_t + (1-m) θ_s over the teacher's state (BN statistics too; f has no counterpart)."""
        from dmlkit.models.ema import ema_update

        ema_update(self.teacher, self.student, self.config.momentum)

    def before_optimizer_step(self) -> None:
        if self.config.ema_before_step:
            self.update_teacher()

    def after_step(self) -> None:
        if not self.config.ema_before_step:
            self.update_teacher()

    # -- test time and optimisation ----------------------------------------------------------------
    @torch.no_grad()
    def pseudo_similarity(self, images: Tensor) -> Tensor:
        """Eqs. 2-5 on the teacher's g of un-augmented images, each its own index (one view)."""
        c = self.config
        teacher = self.teacher(self.views.eval_transform(images))
        return contextual_similarity(teacher, torch.arange(len(images), device=images.device), c.group_size,
                                     c.sigma)

    @classmethod
    def pseudo_supervision_estimators(cls, k: int = 10) -> dict:
        """``stml-similarity``: Eqs. 2-5 with k = ``k`` neighbours, every row its own image (one view)."""
        sigma = Config().sigma
        return {"stml-similarity": lambda embeddings: contextual_similarity(
            embeddings, torch.arange(len(embeddings), device=embeddings.device), k, sigma)}

    @torch.no_grad()
    def quality_embed(self, images: Tensor) -> Tensor:
        """The teacher's g of the test-time view: what Eqs. 2-5 read."""
        return self.teacher(self.views.eval_transform(images))

    def quality_estimators(self) -> dict:
        """``stml-similarity``: Eqs. 2-5 under this run's options, every row its own image (one view)."""
        c = self.config
        return {"stml-similarity": lambda t: contextual_similarity(
            t, torch.arange(len(t), device=t.device), c.neighbourhood, c.sigma, c.expansion,
            normalize=c.teacher_norm, tie_break=c.tie_break)}

    def embed(self, images: Tensor) -> Tensor:
        """Raw f of the deterministic test-time view."""
        return self.f(self.student.backbone(self.views.eval_transform(images)))

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Backbone at ``lr``; heads f and g at ``emb_lr`` (spec §7)."""
        head_lr = self.config.emb_lr if self.config.emb_lr is not None else lr
        backbone = [p for p in self.student.backbone.parameters() if p.requires_grad]
        heads = [p for p in [*self.student.head.parameters(), *self.f.parameters()] if p.requires_grad]
        groups = [{"params": heads, "lr": head_lr, "weight_decay": weight_decay}]
        if backbone:
            groups.insert(0, {"params": backbone, "lr": lr, "weight_decay": weight_decay})
        return groups

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        return {} if self.neighbours is None else {"neighbours": self.neighbours}

    def load_extra_state_from_checkpoint(self, state: dict[str, Any]) -> None:
        if "neighbours" in state:
            self.neighbours = torch.as_tensor(state["neighbours"]).long()


__all__ = ["STML", "Config"]
