"""SLADE: a self-training framework for distance metric learning (Duan et al., CVPR 2021; spec SLADE.md).

    stage 1  teacher: ranking loss on the labeled set                                     (§4)
    stage 2  teacher embeds the unlabeled pool; prototype-seeded k-means -> pseudo labels (§5)
    stage 3  student on labeled + unlabeled batches:                                      (§6-§8)
             L = L_rank(B_l; y) + λ1 L_rank(B_u; P_u, N_u) + λ2 (L_CE + L_SD)
    rounds   the student becomes the next teacher (stage 2 again)                         (§3)

The engine runs epochs and calls :meth:`SLADE.refresh` at each epoch start; the stages are an epoch
schedule (``teacher_epochs``, then ``student_epochs`` per round). ``refresh`` switches stage: it embeds
the training split with the finished network (the teacher), clusters the unlabeled pool, and
re-initialises the student. The labeled set is the training items with a label (>= 0), the unlabeled
pool those with -1. The stage lives in the checkpoint, so a resumed run continues at its stage. The
stage is the method's :meth:`SLADE.phase` (``teacher``, ``student-round-<r>``); each finished stage asks
the engine to keep ``stage-<name>.pt`` and ``stage-pseudo-labels-round-<r>.pt`` in the run directory
(:class:`dmlkit.methods.base.Artifact`; ``teacher_weights`` reuses one), and the supplement's pictures.

Departures from the spec, forced by the one-optimizer engine or left out: the optimizer (and its Adam
moments) is shared by all stages, so the default schedule is a constant rate (the engine's cosine would
span all stages); unlabeled batches are drawn m-per-pseudo-class at every step rather than from a cycled
loader; one process only; optional in-domain SSL of the initial network is not implemented.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from dmlkit.data.labels import label_map
from dmlkit.data.samplers import ConcatenatedBatches, class_balanced_batches
from dmlkit.losses.basis import (
    FeatureBasis,
    RankingLoss,
    SimilarityGaussians,
    all_pairs,
    pair_statistics_inputs,
    select_pairs,
)
from dmlkit.methods.base import Artifact, BuildInfo, Method, RefreshContext
from dmlkit.targets.clusters import class_prototypes, kmeans_pseudo_labels
from dmlkit.weights import safe_torch_load

log = logging.getLogger("dmlkit")


@dataclass
class Config:
    """SLADE's options. No official code exists: every default below is the spec's recommendation."""

    backbone: str = "auto"  # methods.base.default_backbone (§4: ResNet-50 by name); presets pin mnist-net
    pretrained: str | None = "auto"  # ImageNet weights when on this machine; §4: an SSL (SwAV) weights file; None: random
    bn_freeze: bool | None = None  # None: BatchNorm frozen exactly when the backbone is pretrained
    input_size: int | None = None  # side the backbone resizes to (None: its default)
    embedding_dim: int = 512  # §4: linear head to d = 512, L2-normalised
    backbone_lr_multiplier: float = 0.1  # §4: backbone lr 1e-5 against head lr 1e-4
    rank_loss: str = "ms"  # §4: "ms" (Multi-Similarity) | "contrastive"
    m_pos: float = 0.0  # §4: contrastive positive margin (PML default)
    m_neg: float = 1.0  # §4: contrastive negative margin (PML default)
    ms_alpha: float = 2.0  # §4: MS α (PML default)
    ms_beta: float = 50.0  # §4: MS β
    ms_base: float = 0.5  # §4: MS base λ
    ms_eps: float = 0.1  # §4: MS miner ε
    rounds: int = 1  # §3: self-training rounds
    student_init: str = (
        "ssl"  # §3: "ssl" (the teacher's starting weights) | "teacher" (its fine-tuned weights)
    )
    teacher_weights: str | None = (
        None  # a stage-*.pt file of an earlier run as the teacher (default 0 teacher epochs)
    )
    teacher_epochs: int | None = None  # §4: 40; None: the run's epochs split evenly over teacher and rounds
    student_epochs: int | None = None  # §8: 40 per round; None: as above
    n_clusters: int | None = None  # §5: K; None = C (the labeled classes)
    kmeans_init: str = "prototypes"  # §5: "prototypes" (labeled-class means) | "k-means++"
    cluster_labeled: bool = False  # §5: also cluster the labeled points (their assignments ignored)
    kmeans_iters: int = 25  # §5: Lloyd iterations at most
    spherical: bool = False  # §5: re-normalise the centroids after each update
    kmeans_backend: str = "torch"  # §5: "torch" | "faiss" nearest-centroid search
    n_basis: int | None = None  # §6: basis vectors; None = C
    basis_ce: str = "bias_free"  # §6: "bias_free" | "bias"
    basis_sim: str = "cosine"  # §6: "cosine" of W_a f | "softmax" (cosine of class probabilities)
    beta: float = 0.99  # §6: momentum of the similarity Gaussians
    lambda_sd: float = 1.0  # §6: weight of the mean-separation hinge in L_SD
    m_sd: float = 0.5  # §6: its margin
    sd_gradient: str = "momentum"  # §6: "momentum" | "batch"
    sd_labeled_pairs: bool = False  # §6: labeled pairs (true labels) also feed S⁺ / S⁻
    basis_warmup_iters: int = 100  # §6: steps per round training only W_a on detached f
    pair_selection: str = "confident"  # §7: "confident" (P_u and N_u by the thresholds) | "positives" (P_u
    # by threshold, N_u every cross-cluster pair) | "all" (the all-pairs ablation)
    require_label_agreement: bool = True  # §7: P_u needs ŷ_i = ŷ_j, N_u needs ŷ_i ≠ ŷ_j
    kappa: float = 0.0  # §7: thresholds μ⁺ − κσ⁺ and μ⁻ + κσ⁻
    lambda1: float = 1.0  # §8: weight of the unlabeled ranking term
    lambda2: float = 1.0  # §8: weight of L_Basis
    batch_labeled: int = 32  # §6: 8 classes x 4
    batch_unlabeled: int = 32  # §6: 8 pseudo-classes x 4
    samples_per_class: int = 4  # §4, §6: images per (pseudo-)class in a batch
    pictures: bool = True  # supplement Figs. 1-4: labeled (colour) vs pool (grey) maps in the run directory


_CHOICES = {
    "rank_loss": ("ms", "contrastive"),
    "student_init": ("ssl", "teacher"),
    "kmeans_init": ("prototypes", "k-means++"),
    "pair_selection": ("confident", "positives", "all"),
}


class SLADE(Method):
    """SLADE: teacher on labels, k-means pseudo labels, student with basis-selected pairs (semi-supervised)."""

    name = "slade"
    uses_labels = "partial"
    Config = Config
    single_process = "its unlabeled-pair statistics are per batch"
    renamed_options: ClassVar[dict[str, str]] = {"m_per_class": "samples_per_class", "cluster_init": "kmeans_init"}
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 80,
        "batch_size": 64,
        "lr": 1e-4,
        "weight_decay": 1e-4,
        "optimizer": "adamw",
        "scheduler": "constant",
    }

    def __init__(self, config: Config, info: BuildInfo) -> None:
        super().__init__()
        from dmlkit.data.views import Views
        from dmlkit.methods.reference import build_embedder

        for key, allowed in _CHOICES.items():
            if getattr(config, key) not in allowed:
                raise ValueError(
                    f"SLADE option {key} must be one of {', '.join(allowed)}, got {getattr(config, key)!r}"
                )
        if info.num_classes < 1:
            raise ValueError(
                "SLADE needs labeled classes in the training split; pass --labels-per-class N "
                "or a dataset whose training split has labels"
            )
        if config.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {config.rounds}")
        self.config, self.num_classes = config, info.num_classes
        n_basis = config.n_basis or info.num_classes
        if n_basis < info.num_classes:
            raise ValueError(f"n_basis={n_basis} is below the {info.num_classes} labeled classes L_CE needs")
        self.backbone, self.head = build_embedder(
            config.backbone, config.embedding_dim, info, config.pretrained,
            bn_freeze=config.bn_freeze, input_size=config.input_size,
        )
        self.views = Views(info.views_preset, 1, augmentations=info.augmentations,
                           strength=info.view_strength)
        self.basis = FeatureBasis(n_basis, config.embedding_dim, config.basis_ce, config.basis_sim)
        self.gaussians = SimilarityGaussians(config.beta, config.lambda_sd, config.m_sd, config.sd_gradient)
        self.rank = RankingLoss(
            config.rank_loss,
            config.m_pos,
            config.m_neg,
            config.ms_alpha,
            config.ms_beta,
            config.ms_base,
            config.ms_eps,
        )
        self.register_buffer("pseudo_labels", torch.full((info.num_train,), -1, dtype=torch.long))
        self.class_map = torch.zeros(0, dtype=torch.long)  # visible label -> 0..C-1, set by refresh
        # the student's starting point ("ssl" init): the weights the teacher started from
        self._initial = copy.deepcopy(
            {
                "backbone": self.backbone.state_dict(),
                "head": self.head.state_dict(),
                "basis": self.basis.state_dict(),
            }
        )
        if config.teacher_weights:
            stage = safe_torch_load(config.teacher_weights)
            if not isinstance(stage, dict) or not {"backbone", "head"} <= set(stage):
                raise ValueError(f"teacher_weights {config.teacher_weights} is not a SLADE stage-*.pt file")
            self.backbone.load_state_dict(stage["backbone"])
            self.head.load_state_dict(stage["head"])
        self.stage_round = 0  # 0: teacher; r >= 1: student of round r
        self.steps_in_stage = 0

    # -- schedule -----------------------------------------------------------------------------
    def round_starts(self, total_epochs: int | None) -> list[int]:
        """First epoch of each student round: ``[T, T + S_1, ...]`` for ``rounds`` rounds."""
        c, r = self.config, self.config.rounds
        t, s = c.teacher_epochs, c.student_epochs
        if total_epochs is None and (t is None or s is None):
            raise ValueError("SLADE needs teacher_epochs and student_epochs, or the run's epochs to split")
        if t is None and c.teacher_weights:
            t = 0
        if t is None and s is None:
            t = total_epochs // (r + 1)
        if s is None:
            s = (total_epochs - t) // r
        if t is None:
            t = total_epochs - r * s
        lengths = [s] * r
        if total_epochs is not None:
            if c.student_epochs is None:  # the last round takes the remainder of an even split
                lengths[-1] += total_epochs - t - r * s
            shortest = min([t, *lengths]) if not c.teacher_weights else min([t + 1, *lengths])
            if total_epochs != t + sum(lengths) or shortest < 1:
                raise ValueError(
                    f"epochs={total_epochs} does not fit teacher_epochs={c.teacher_epochs} + rounds={r} x "
                    f"student_epochs={c.student_epochs} (every stage needs >= 1 epoch); set epochs to "
                    f"teacher_epochs + rounds x student_epochs"
                )
        return [t + sum(lengths[:i]) for i in range(r)]

    def round_for_epoch(self, epoch: int, total_epochs: int | None) -> int:
        return sum(epoch >= start for start in self.round_starts(total_epochs))

    # -- refresh: stage switches --------------------------------------------------------------
    def phase(self) -> str:
        return "teacher" if self.stage_round == 0 else f"student-round-{self.stage_round}"

    def refresh(self, context: RefreshContext) -> None:
        self.check_world_size(context.world_size)
        labels = torch.as_tensor(context.train.labels, dtype=torch.long)
        if len(self.class_map) == 0:
            self.class_map = label_map(labels)
        if not (labels < 0).any():
            raise ValueError(
                "SLADE needs an unlabeled pool (items with label -1) in the training split; "
                "pass --labels-per-class N or a dataset with unlabeled training items"
            )
        pictures = self.config.pictures and context.keeps_artifacts
        target = self.round_for_epoch(context.epoch, context.extra.get("epochs"))
        initial = context.epoch == 0 and self.stage_round == 0 and not self.config.teacher_weights
        if initial and pictures:
            self._picture(context, None, "pictures/slade-initial.png", "initial embedding")
        while self.stage_round < target:
            self._next_round(context, pictures)

    def _next_round(self, context: RefreshContext, pictures: bool) -> None:
        """The finished network becomes the teacher: stage file, pseudo labels (§5), student init (§3)."""
        c = self.config
        finished = self.phase()
        new_round = self.stage_round + 1
        if context.keeps_artifacts:  # copies: the student's initialisation below overwrites the weights
            weights = copy.deepcopy({"backbone": self.backbone.state_dict(), "head": self.head.state_dict()})
            self.keep_artifact(Artifact(f"stage-{finished}.pt", {"stage": finished, "round": self.stage_round, **weights}))
        features = context.embed(self.embed)  # [N, d] teacher embeddings, eval mode, test transform
        labels = torch.as_tensor(context.train.labels, dtype=torch.long)
        labeled = labels >= 0
        y = self.class_map[labels[labeled]]
        k = c.n_clusters or self.num_classes
        init = (
            class_prototypes(features[labeled], y, self.num_classes)
            if c.kmeans_init == "prototypes"
            else "k-means++"
        )
        points = features if c.cluster_labeled else features[~labeled]
        assigned, centroids = kmeans_pseudo_labels(
            points,
            k,
            init,
            seed=context.seed + new_round,
            iters=c.kmeans_iters,
            spherical=c.spherical,
            backend=c.kmeans_backend,
        )
        if c.cluster_labeled:
            assigned = assigned[~labeled]
        self.pseudo_labels.fill_(-1)
        self.pseudo_labels[~labeled.to(self.pseudo_labels.device)] = assigned.to(self.pseudo_labels.device)
        if context.keeps_artifacts:
            self.keep_artifact(Artifact(
                f"stage-pseudo-labels-round-{new_round}.pt",
                {"round": new_round, "pseudo_labels": self.pseudo_labels.cpu().clone(), "centroids": centroids},
            ))
        if self.stage_round == 0 and pictures:
            self._picture(context, features, "pictures/slade-teacher.png", "teacher embedding")
        if c.student_init == "ssl":
            self.backbone.load_state_dict(self._initial["backbone"])
            self.head.load_state_dict(self._initial["head"])
        self.basis.load_state_dict(self._initial["basis"])
        self.gaussians.reset()
        log.info(
            "SLADE: %s finished; round %d student on %d pseudo-labeled items in %d clusters",
            finished,
            new_round,
            int((~labeled).sum()),
            k,
        )
        self.stage_round, self.steps_in_stage = new_round, 0

    # -- batches and loss ---------------------------------------------------------------------
    def batch_sampler(self, dataset, batch_size: int, seed: int, epoch: int):
        c = self.config
        if batch_size != c.batch_labeled + c.batch_unlabeled:
            raise ValueError(
                f"SLADE's batch is batch_labeled + batch_unlabeled = {c.batch_labeled + c.batch_unlabeled}, "
                f"but batch_size is {batch_size}; set batch_size to their sum or change the two options"
            )
        labeled = class_balanced_batches(np.asarray(dataset.labels), c.batch_labeled, c.samples_per_class, seed, epoch)
        if self.stage_round == 0:
            return labeled
        unlabeled = class_balanced_batches(
            self.pseudo_labels.cpu().numpy(),
            c.batch_unlabeled,
            c.samples_per_class,
            seed + 1_000_003,
            epoch,
            num_batches=len(labeled),
        )
        return ConcatenatedBatches(labeled, unlabeled)

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        c = self.config
        embeddings = self.head(self.backbone(self.views(batch["image"])))
        is_labeled = batch["label"] >= 0
        f_l, y_l = embeddings[is_labeled], self.class_map.to(embeddings.device)[batch["label"][is_labeled]]
        if self.stage_round == 0:  # stage 1: the teacher's ranking loss on labels
            rank_l = self.rank.labeled(f_l, y_l)
            return {"loss": rank_l, "rank_labeled": rank_l}
        f_u = embeddings[~is_labeled]
        pseudo = self.pseudo_labels.to(embeddings.device)[batch["index"][~is_labeled].to(embeddings.device)]
        warm = self.steps_in_stage < c.basis_warmup_iters
        fb_l, fb_u = (f_l.detach(), f_u.detach()) if warm else (f_l, f_u)
        ce = self.basis.ce_loss(fb_l, y_l)  # L_CE on labeled items
        similarity = self.basis.similarity(fb_u)  # s_ij on unlabeled items
        s_pos, s_neg = pair_statistics_inputs(similarity, pseudo)
        if c.sd_labeled_pairs:  # pairs within the labeled part; labeled-unlabeled pairs never count
            l_pos, l_neg = pair_statistics_inputs(self.basis.similarity(fb_l), y_l)
            s_pos, s_neg = torch.cat([s_pos, l_pos]), torch.cat([s_neg, l_neg])
        sd = self.gaussians(s_pos, s_neg)  # L_SD, momentum Gaussians
        basis_loss = ce + sd
        if c.pair_selection == "all":
            positive, negative = all_pairs(pseudo)
        else:  # thresholds: the momentum means after this batch's update (§7)
            positive, negative = select_pairs(
                similarity,
                pseudo,
                *self.gaussians.thresholds(c.kappa),
                require_label_agreement=c.require_label_agreement,
                select_negatives=c.pair_selection == "confident",
            )
        if warm:  # basis warm-up: only W_a trains (the network gets no gradient at all)
            rank_l = rank_u = torch.zeros((), device=embeddings.device)
            total = c.lambda2 * basis_loss
        else:
            rank_l = self.rank.labeled(f_l, y_l)
            rank_u = self.rank.pairs(f_u, positive, negative)
            total = rank_l + c.lambda1 * rank_u + c.lambda2 * basis_loss
        return {
            "loss": total,
            "rank_labeled": rank_l,
            "rank_unlabeled": rank_u,
            "ce": ce,
            "sd": sd,
            "positive_pairs": positive.sum().float(),
            "negative_pairs": negative.sum().float(),
            "mu_pos": self.gaussians.mu_pos.clone(),
            "mu_neg": self.gaussians.mu_neg.clone(),
        }

    def after_step(self) -> None:
        self.steps_in_stage += 1

    def embed(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(self.views.eval_transform(images)))

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        head = list(self.head.parameters()) + list(self.basis.parameters())
        return [
            {
                "params": list(self.backbone.parameters()),
                "lr": lr * self.config.backbone_lr_multiplier,
                "weight_decay": weight_decay,
            },
            {"params": head, "lr": lr, "weight_decay": weight_decay},
        ]

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        return {"stage_round": self.stage_round, "steps_in_stage": self.steps_in_stage}

    def load_extra_state_from_checkpoint(self, state: dict[str, Any]) -> None:
        self.stage_round = int(state.get("stage_round", 0))
        self.steps_in_stage = int(state.get("steps_in_stage", 0))

    # -- supplement Figs. 1-4 -----------------------------------------------------------------
    def _picture(
        self, context: RefreshContext, features: Tensor | None, name: str, title: str, max_points: int = 2000
    ) -> None:
        """Ask for a t-SNE map of labeled embeddings (coloured by class) and the unlabeled pool (grey)."""
        labels = np.asarray(context.train.labels)
        rng = np.random.default_rng(context.seed)
        parts = [np.flatnonzero(labels >= 0), np.flatnonzero(labels < 0)]  # as many labeled as pool points
        idx = np.sort(
            np.concatenate([rng.choice(p, min(max_points // 2, len(p)), replace=False) for p in parts])
        )
        x = features[idx] if features is not None else context.embed(self.embed, context.train.subset(idx))
        self.keep_artifact(Artifact(name, points=(x.numpy(), labels[idx]), title=f"SLADE: {title}", seed=context.seed))
