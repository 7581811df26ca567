"""DRML: Deep Relational Metric Learning (Zheng, Zhang, Lu, Zhou, ICCV 2021; spec DRML.md).

trunk h(x) -> K branch nodes y^k -> decoders assign x to the branch that reconstructs it best
-> one round of relational message passing over the K nodes -> f(x) = [ŷ^1; ..; ŷ^K]

    J = Σ_k L_m^(k)(branch k, its assigned samples) + λ_emb L_m(f) + λ_rec J_rec      (spec §3)

Any base loss L_m (Triplet, semi-hard Triplet, Margin + distance-weighted sampling, ProxyAnchor,
CosFace) is wrapped; each of its K + 1 instances owns its proxy table / class boundaries.
The test-time embedding is the L2-normalised f(x).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from dmlkit.data.labels import label_map
from dmlkit.losses.relational import DRMLLoss
from dmlkit.methods.base import BuildInfo, Method, RefreshContext, build_method_backbone
from dmlkit.models.relational import RelationalHead

PROXY_LOSSES = ("proxy_anchor", "cosface")
GRAD_CLIP_WHEN = ("first_step", "every_step")


@dataclass
class Config:
    """DRML's options; defaults are the official code's (DRML-PA on CUB, spec §5, §9)."""

    base_loss: str = "proxy_anchor"  # §9: proxy_anchor | cosface | triplet | margin
    miner: str = "auto"  # §3: hard (Triplet), semihard (TSH), distance_weighted (MDW); auto picks per loss
    backbone: str = "auto"  # methods.base.default_backbone (§2: BN-Inception by name, as the presets)
    pretrained: str | None = "auto"  # ImageNet weights when on this machine; None: random; or a weights file
    bn_freeze: bool | None = None  # §2: all trunk BatchNorm layers frozen; None = frozen iff pretrained
    input_size: int | None = None  # side the backbone resizes to (None: its default)
    num_branches: int = 4  # §2: K = 4
    node_dim: int = 128  # §2: d = 128 (32 in MLRC mode, §7); the embedding has K·d dimensions
    lambda_emb: float = 10.0  # §3: weight of the final-embedding loss
    lambda_rec: float = 1.0  # §3 / README (paper description: 0.1)
    # base-loss settings (§3)
    pa_delta: float = 0.2  # DRML's ProxyAnchor margin (baseline: 0.1)
    pa_alpha: float = 64.0  # DRML's ProxyAnchor scale (baseline: 32)
    cosface_m: float = 0.35  # CosFace additive cosine margin m
    cosface_s: float = 64.0  # CosFace scale s
    triplet_margin: float = 1.0  # old DRML triplet configs
    semihard_margin: float = 0.2  # TSH window d_ap < d_an < d_ap + 0.2
    hard_cutoff: float = 0.5  # hard miner clamps distances at min(max d_pos, 0.5)
    margin_alpha: float = 0.2  # Margin loss α
    margin_beta0: float = 1.2  # initial class boundaries β_c
    dw_dim: int | str = "auto"  # n of distance-weighted sampling; auto = size of the sampled vectors
    dw_mask_positives: bool = True  # never draw a positive as the negative (GeDML does not mask)
    dw_cutoff: float = 0.5  # distances clamped at >= 0.5
    # paper-vs-code switches (§6); defaults follow the code
    branch_input: str = "chunk"  # "full": every node layer reads all of h
    edge_score: str = "relu_l1"  # "linear_sum": linear score / sum of incoming scores
    emb_grad_into_nodes: bool = True  # False: J_emb trains only the relation module
    recon_error: str = "mse_per_dim"  # "l2_mean": unsquared L2 norm
    integrator_init: str = "identity"  # "kaiming"
    # multi_proxy_collector.py L42: kaiming_normal_(a=√5), std 1/√(3d); "kaiming_normal": fan_out, std √(2/C)
    branch_proxy_init: str = "kaiming_normal_a5"  # branch tables: std 1/√(3d) | "kaiming_normal" (fan_out)
    # optimisation (§5): trunk at the engine lr (5e-5), head ×20 (1e-3), proxies / β ×200 (1e-2)
    head_lr_multiplier: float = 20.0  # learning rate of the head (relation module, integrator): trunk lr x this
    proxy_lr_multiplier: float = 200.0  # learning rate of the loss's proxies and margin β: trunk lr x this
    skip_empty_branch_step: bool = False  # §3 open choice: code steps an empty branch's proxies anyway
    warmup_epochs: int = 1  # §5: first epoch steps only the head and the proxy groups
    # GeDML trainers/base_trainer.py L334: schedulers do not step in warm-up epochs (True: they do)
    step_scheduler_in_warmup: bool = False  # False: the lr schedule holds in warm-up | True: it steps
    grad_clip: float = 10.0  # §5: gradient-norm clipping per module (0 = off)
    # GeDML grad_clipper_creator.py L12 hands clip_grad_norm_ a .parameters() generator, which the first
    # call exhausts (utils.py L20): the official clipping acts on the first step only. "every_step": each step
    grad_clip_when: str = "first_step"  # clip on the first optimizer step only | "every_step"
    sampler: str = "auto"  # §5: random batches for proxy losses, m-per-class for Triplet / Margin
    samples_per_class: int = 4  # §5: m = 4 (2 in MLRC mode); with < batch/m classes: all classes, batch/C each


class DRML(Method):
    """Deep Relational Metric Learning: relation-aware embeddings over any supervised base loss."""

    name = "drml"
    uses_labels = "all"
    Config = Config
    defaults: ClassVar[dict[str, Any]] = {
        # GeDML base_manager.py L250: range(0, 61) = 61 epochs; README command: batch, lrs, wd (DRML-PA on CUB)
        "epochs": 61, "batch_size": 180, "lr": 5e-5, "weight_decay": 1e-4,
        "optimizer": "adamw", "scheduler": "step",  # §5: StepLR, step 10 epochs, γ = 0.5 (step_lr.yaml)
        # base_manager.py L39-40, L294-299: stop after 15 epochs without a new best R@1, or when R@1 falls
        # to 0.6 x best. The official code watches the *test* R@1; dmlkit watches a validation split's
        # (--val-fraction / --fold); without one early stopping is inactive (docs/methods/drml.md).
        "early_stop_patience": 15, "early_stop_monitor": "val_recall@1", "early_stop_collapse": 0.6,
    }
    renamed_options: ClassVar[dict[str, str]] = {"freeze_bn": "bn_freeze"}  # every method's backbone option

    def __init__(self, config: Config, info: BuildInfo) -> None:
        super().__init__()
        from dmlkit.data.views import Views
        if info.num_classes < 1:
            raise ValueError("DRML is supervised: the training split has no labeled classes")
        if config.sampler not in ("auto", "random", "m_per_class"):
            raise ValueError(f"sampler must be 'auto', 'random' or 'm_per_class', got '{config.sampler}'")
        if config.grad_clip_when not in GRAD_CLIP_WHEN:
            raise ValueError(f"grad_clip_when must be one of {GRAD_CLIP_WHEN}, got '{config.grad_clip_when}'")
        self.config = config
        self.num_classes = info.num_classes
        self.backbone = build_method_backbone(config.backbone, info, config.pretrained, config.bn_freeze,
                                              config.input_size, paper="bn-inception")
        self.head = RelationalHead(
            self.backbone.out_dim, config.num_branches, config.node_dim, branch_input=config.branch_input,
            edge_score=config.edge_score, emb_grad_into_nodes=config.emb_grad_into_nodes,
            integrator_init=config.integrator_init,
        )
        loss_kw = {k: v for k, v in asdict(config).items() if k in (
            "miner", "pa_delta", "pa_alpha", "cosface_m", "cosface_s", "triplet_margin", "semihard_margin",
            "hard_cutoff", "margin_alpha", "margin_beta0", "dw_dim", "dw_mask_positives", "dw_cutoff")}
        self.objective = DRMLLoss(config.base_loss, info.num_classes, config.num_branches, config.node_dim,
                                  config.lambda_emb, config.lambda_rec, config.recon_error,
                                  branch_proxy_init=config.branch_proxy_init, **loss_kw)
        self.views = Views(info.views_preset, 1, augmentations=info.augmentations,
                           strength=info.view_strength)
        self.epoch = 0
        self.optimizer_steps = 0  # steps seen by before_optimizer_step in this process
        self.clipped_steps = 0  # of which gradients were clipped
        self.register_buffer("label_map", torch.zeros(0, dtype=torch.long), persistent=False)

    # --- data -------------------------------------------------------------------------------------
    def batch_sampler(self, dataset, batch_size: int, seed: int, epoch: int):
        from dmlkit.data.samplers import MPerClassBatchSampler, RandomBatchSampler

        sampler = self.config.sampler
        if sampler == "auto":
            sampler = "random" if self.objective.final_loss.name in PROXY_LOSSES else "m_per_class"
        if sampler == "random":
            return RandomBatchSampler(len(dataset), batch_size, seed=seed, epoch=epoch)
        m = self.config.samples_per_class
        if batch_size % m:
            raise ValueError(f"batch_size {batch_size} is not a multiple of samples_per_class {m}")
        classes = len(np.unique(dataset.labels[dataset.labels >= 0]))
        if batch_size // m > classes:  # fewer classes than batch_size / m: every class, batch_size // C each
            return MPerClassBatchSampler(dataset.labels, classes, batch_size // classes, seed=seed, epoch=epoch)
        return MPerClassBatchSampler(dataset.labels, batch_size // m, m, seed=seed, epoch=epoch)

    def refresh(self, context: RefreshContext) -> None:
        """Remember the epoch (warm-up) and map the training classes to 0..C-1 for the proxy tables."""
        self.epoch = context.epoch
        classes = np.unique(context.train.labels[context.train.labels >= 0])
        if len(classes) != self.num_classes:
            raise ValueError(f"DRML was built for {self.num_classes} classes but the training split has {len(classes)}")
        self.label_map = label_map(classes).to(self.label_map.device)

    def _class_ids(self, labels: Tensor) -> Tensor:
        if len(self.label_map) and (labels >= 0).all() and (labels < len(self.label_map)).all():
            labels = self.label_map.to(labels.device)[labels]
        if (labels < 0).any() or (labels >= self.num_classes).any():
            raise ValueError(f"DRML needs labels in [0, {self.num_classes}) for every training item; got "
                             f"{labels.min().item()}..{labels.max().item()} (unlabeled or unseen classes)")
        return labels

    # --- step ---------------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        labels = self._class_ids(batch["label"])
        out = self.head(self.backbone(self.views(batch["image"])))
        return self.objective(out, labels)  # J = Σ_k J_k + λ_emb J_emb + λ_rec J_rec

    def before_optimizer_step(self) -> None:
        if self.epoch < self.config.warmup_epochs:  # warm-up: the trunk does not step
            for p in self.backbone.parameters():
                p.grad = None
        if self.config.skip_empty_branch_step:
            for size, loss in zip(self.objective.last_branch_sizes.tolist(), self.objective.branch_losses):
                if size == 0:
                    for p in loss.parameters():
                        p.grad = None
        first = self.optimizer_steps == 0
        self.optimizer_steps += 1
        if self.config.grad_clip > 0 and (first or self.config.grad_clip_when == "every_step"):
            self.clip_gradients()

    def clip_gradients(self) -> None:
        """Clip the gradient norm at ``grad_clip`` per official clipper group: trunk, head, the K branch
        tables together (one "ensemble" collector), the final table (link_proxy_anchor_drml.yaml L41-45)."""
        self.clipped_steps += 1
        for module in (self.backbone, self.head, self.objective.branch_losses, self.objective.final_loss):
            params = [p for p in module.parameters() if p.grad is not None]
            if params:
                nn.utils.clip_grad_norm_(params, self.config.grad_clip)

    def scheduler_delay(self) -> int:
        """The warm-up epochs hold the schedule (GeDML base_trainer.py L334: no step while warming up)."""
        return 0 if self.config.step_scheduler_in_warmup else self.config.warmup_epochs

    def embed(self, images: Tensor) -> Tensor:
        """The relation-aware embedding ``f(x)``, L2-normalised ``[B, K·d]``; it depends on x alone."""
        f = self.head(self.backbone(self.views.eval_transform(images))).embedding
        return nn.functional.normalize(f, dim=-1)

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Trunk at ``lr``, the whole DRML head at ×20, proxy tables / β at ×200 (AdamW wd everywhere)."""
        c = self.config
        groups = [
            {"params": [p for p in self.backbone.parameters() if p.requires_grad], "lr": lr},
            {"params": list(self.head.parameters()), "lr": lr * c.head_lr_multiplier},
            {"params": list(self.objective.parameters()), "lr": lr * c.proxy_lr_multiplier},
        ]
        return [dict(g, weight_decay=weight_decay) for g in groups if g["params"]]


__all__ = ["DRML", "Config"]
