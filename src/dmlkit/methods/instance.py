"""Instance discrimination on two views as an unsupervised DML baseline (issue 9).

Every image is its own class: the two augmented views of one image are a positive pair and every other
embedding in the batch (and in the queue, if any) is a negative. The loss is NT-Xent (SimCLR, Chen et al.
ICML 2020, Eq. 1) through pytorch-metric-learning's ``SupConLoss``, which equals its ``NTXentLoss`` here
because every anchor has exactly one positive (its other view, or its key) — and costs O(n²) where
``NTXentLoss`` builds a (positive pairs × negative pairs) matrix, O(n³): at 240 rows that matrix made the
loss 3x slower than the network's forward and backward on CPU. Optionally the second view goes
through a momentum encoder and the negatives come from a queue of past keys (MoCo, He et al. CVPR 2020,
Sec. 3.2), through pytorch-metric-learning's ``CrossBatchMemory``. Ground-truth labels are never read.

Per iteration (b images, views [view 1 of all b ; view 2 of all b], instance ids u = offset + 0..b-1)::

    SimCLR  (momentum=None, queue_size=0):  z = normalize(f(x))  [2b]; L = NT-Xent(z, [u ; u])
    momentum encoder, no queue:             q = normalize(f(view 1)), k = normalize(f_m(view 2)), no grad;
                                            L = NT-Xent(q, u; references k, u)
    queue (MoCo):                           keys k (f_m, or f without grad when momentum=None) enter the
                                            queue first; L = NT-Xent(q, u; references = queue, its ids)
    NT-Xent per positive pair (i, p): -log exp(s_ip/τ) / (exp(s_ip/τ) + Σ_{n: id_n ≠ id_i} exp(s_in/τ)),
    s = cosine similarity; averaged over the positive pairs.
    after optimizer.step():  f_m ← m f_m + (1 - m) f   (MoCo Eq. 2, parameters and BN statistics)

Instance ids grow with every batch (``offset``), so a key in the queue is never a positive of a later
query, even when it shows the same image (MoCo's queue holds negatives only). Two departures from MoCo:
the batch's own keys enter the queue before the loss, so the other images' current keys are negatives
too (MoCo contrasts with the older queue only), and the momentum encoder runs in eval mode (BN running
statistics, themselves averaged by the EMA) instead of MoCo's shuffled batch statistics. At test time
the embedding is the L2-normalised f.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dmlkit.methods.base import BuildInfo, Method
from dmlkit.models.heads import l2_normalize


@dataclass
class Config:
    """Instance-discrimination options; defaults are SimCLR's (in-batch negatives) unless noted."""

    backbone: str = "auto"  # network under comparison (methods.base.default_backbone); presets pin mnist-net
    pretrained: str | None = "auto"  # ImageNet weights when on this machine; None: from scratch, as SimCLR/MoCo
    bn_freeze: bool | None = None  # None: BatchNorm frozen exactly when the backbone is pretrained
    input_size: int | None = None  # side the backbone resizes to (None: its default)
    embedding_dim: int = 128  # SimCLR's 128-d output; the linear embedding of the other small-image baselines
    temperature: float = 0.5  # SimCLR App. B.9: τ = 0.5 for CIFAR-10 (MoCo: 0.07)
    momentum: float | None = None  # None: one network for both views (SimCLR); MoCo: m = 0.999 (Sec. 3.2)
    queue_size: int = 0  # 0: in-batch negatives (SimCLR); MoCo: 65,536 keys on ImageNet (Sec. 4)

    def __post_init__(self) -> None:
        if int(self.embedding_dim) < 1:
            raise ValueError(f"instance option embedding_dim must be positive, got {self.embedding_dim}")
        if not self.temperature > 0:
            raise ValueError(f"instance option temperature must be positive, got {self.temperature}")
        if self.momentum is not None and not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"instance option momentum must lie in [0, 1] (or be null for SimCLR), got {self.momentum}")
        if int(self.queue_size) < 0:
            raise ValueError(f"instance option queue_size must be >= 0 (0 = no queue), got {self.queue_size}")


def instance_ids(batch_size: int, offset: int = 0, device: torch.device | str | None = None) -> Tensor:
    """The NT-Xent labels of one batch: ``offset + [0..b-1, 0..b-1]`` (long ``[2b]``), so that the two
    views of image i (rows i and b + i of the view-major batch) share a label and nothing else does."""
    ids = torch.arange(offset, offset + batch_size, device=device)
    return ids.repeat(2)


class InstanceDiscrimination(Method):
    """Instance discrimination: NT-Xent between two views (SimCLR), optional momentum encoder and queue (MoCo)."""

    name: ClassVar[str] = "instance"
    uses_labels: ClassVar[str] = "none"
    Config: ClassVar[type] = Config
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 100,  # SimCLR App. B.9: CIFAR-10 runs of 100-1000 epochs
        "batch_size": 256,  # SimCLR App. B.9: 256-4096 on CIFAR-10 (MoCo: 256)
        "lr": 1e-3,  # Adam instead of SimCLR's LARS (dmlkit has no LARS)
        "weight_decay": 1e-6,  # SimCLR Sec. B.1
        "optimizer": "adam",
        "scheduler": "cosine",  # SimCLR: cosine decay
    }

    def __init__(self, config: Config, info: BuildInfo, network: nn.Module | None = None) -> None:
        """``network`` replaces backbone + embedding head (images -> ``[B, embedding_dim]``), e.g. in tests."""
        super().__init__()
        from pytorch_metric_learning.losses import CrossBatchMemory, SupConLoss

        from dmlkit.data.views import Views

        self.config = config = config if config is not None else Config()
        self.network = network if network is not None else _embedding_network(config, info)
        self.views = Views(info.views_preset, 2, augmentations=info.augmentations,
                           strength=info.view_strength)
        self.momentum_encoder = (copy.deepcopy(self.network).requires_grad_(False).eval()
                                 if config.momentum is not None else None)
        ntxent = SupConLoss(temperature=config.temperature)  # = NT-Xent with one positive per anchor (docstring)
        self.loss_fn = (CrossBatchMemory(ntxent, config.embedding_dim, memory_size=config.queue_size)
                        if config.queue_size > 0 else ntxent)
        self.register_buffer("next_id", torch.tensor(0))  # first instance id of the next batch

    def train(self, mode: bool = True) -> InstanceDiscrimination:
        """The momentum encoder stays in eval mode: it only follows f through the EMA."""
        super().train(mode)
        if self.momentum_encoder is not None:
            self.momentum_encoder.eval()
        return self

    @property
    def uses_key_encoder(self) -> bool:
        """True when the second view gives keys (MoCo style) rather than a second set of queries."""
        return self.momentum_encoder is not None or self.config.queue_size > 0

    # -- one iteration ----------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """NT-Xent of the two views of every image (module docstring)."""
        images = batch["image"]
        b = images.shape[0]
        x = self.views(images)  # [view 1 of all b ; view 2 of all b]
        ids = instance_ids(b, int(self.next_id), device=x.device)
        self.next_id += b
        if not self.uses_key_encoder:
            return {"loss": self.loss_fn(l2_normalize(self.network(x)), ids)}  # SimCLR Eq. 1 over 2b rows
        q = l2_normalize(self.network(x[:b]))
        with torch.no_grad():
            encoder = self.momentum_encoder if self.momentum_encoder is not None else self.network
            k = l2_normalize(encoder(x[b:]))
        if self.config.queue_size == 0:
            return {"loss": self.loss_fn(q, ids[:b], ref_emb=k, ref_labels=ids[b:])}
        if b > self.config.queue_size:
            raise ValueError(f"instance: queue_size {self.config.queue_size} is smaller than the batch ({b} images); "
                             "the batch's own keys would overwrite each other: raise queue_size")
        enqueue = torch.arange(2 * b, device=x.device) >= b  # keys enter the queue, queries are the anchors
        return {"loss": self.loss_fn(torch.cat([q, k]), ids, enqueue_mask=enqueue)}

    @torch.no_grad()
    def after_step(self) -> None:
        """MoCo Eq. 2 after the optimizer step: f_m ← m f_m + (1 - m) f."""
        if self.momentum_encoder is not None:
            from dmlkit.models.ema import ema_update

            ema_update(self.momentum_encoder, self.network, self.config.momentum)

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalised embedding of the deterministic test-time view."""
        return l2_normalize(self.network(self.views.eval_transform(images)))

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The network only (the momentum encoder and the queue are not trained)."""
        return [{"params": [p for p in self.network.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": weight_decay}]

    # -- queue pointer (CrossBatchMemory keeps it outside the state dict) ---------------------------
    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        if self.config.queue_size == 0:
            return {}
        return {"queue_idx": int(self.loss_fn.queue_idx), "queue_filled": bool(self.loss_fn.has_been_filled)}

    def load_extra_state_from_checkpoint(self, state: dict[str, Any]) -> None:
        if self.config.queue_size > 0 and "queue_idx" in state:
            self.loss_fn.queue_idx = int(state["queue_idx"])
            self.loss_fn.has_been_filled = bool(state["queue_filled"])


def _embedding_network(config: Config, info: BuildInfo) -> nn.Module:
    """Backbone + linear embedding head (the method L2-normalises the output)."""
    from dmlkit.methods.reference import build_embedder

    backbone, head = build_embedder(config.backbone, config.embedding_dim, info, config.pretrained, normalize=False,
                                    bn_freeze=config.bn_freeze, input_size=config.input_size)
    return nn.Sequential(backbone, head)


__all__ = ["Config", "InstanceDiscrimination", "instance_ids"]
