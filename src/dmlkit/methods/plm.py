"""PLM: Piecewise-Linear Manifolds for deep metric learning (Bhatnagar and Ahuja; seed 003, spec PLM.md).

Per step (Secs. 3.1-3.6): a nearest-neighbour batch of images, two augmentations each; the momentum
encoder f_φ embeds them and every point gets an m-dim linear piece (Sec. 3.2); the pieces give the
point-point and proxy-point similarities (Eqs. 2-5); the network f_θ is trained so that its distances
match δ(1 - s) (Eqs. 6-7) while proxies and their bases follow the data (Eqs. 7-8); then φ moves
towards θ (Eq. 1).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dmlkit.data.seeding import seeded_generator
from dmlkit.data.views import Views
from dmlkit.losses.manifold import (
    ManifoldProxies,
    point_point_loss,
    proxy_neighbourhood_loss,
    proxy_point_loss,
)
from dmlkit.methods.base import BuildInfo, Method, RefreshContext, build_method_backbone
from dmlkit.models import EmbeddingHead, ema_update, l2_normalize
from dmlkit.targets.manifold import (
    basis_angle_cosine,
    batch_pieces,
    manifold_estimate,
    point_similarity,
    proxy_similarity,
)


@dataclass
class PLMConfig:
    """PLM's options; defaults are Sec. 4.1 of seed 003 unless marked as a spec PLM.md open choice."""

    n_alpha: float = 4.0  # Sec. 4.1: N_α = 4 (orthogonal decay, Eq. 3)
    n_beta: float = 0.5  # Sec. 4.1: N_β = 0.5 (in-piece decay, Eq. 4)
    n_proxies: int = 100  # Sec. 4.1: N_ρ = 100
    delta: float = 2.0  # Sec. 4.1: δ = 2, the largest distance on the unit sphere
    piece_dim: int = 3  # Sec. 4.1: m = 3
    threshold: float = 0.9  # Sec. 4.1: reconstruction quality T = 90 %
    momentum: float = 0.999  # Sec. 4.1: γ = 0.999 (Eq. 1)
    group_size: int = 10  # Sec. 3.1.1 k = |B|/N; spec §2: k = 10 (10 groups of 10 images per batch of 100)
    piece_neighbours: int = (
        10  # Sec. 3.2: each piece is grown over the k nearest other batch points (spec §3)
    )
    views: int = 2  # Sec. 4.1: two random augmentations of each image, as in STML [19]
    batch_unit: str = (
        "images"  # spec §2: batch size counts images (100 images = 200 embeddings) | "embeddings"
    )
    nn_space: str = (
        "momentum"  # spec §2: neighbour table from f_φ over the training split, every epoch | "network"
    )
    proxy_lr_multiplier: float = 100.0  # Sec. 4.1: proxies (and bases) learn 100x faster
    backbone: str = (
        "auto"  # Sec. 4.1: GoogLeNet (the presets name it); "auto" = methods.base.default_backbone
    )
    pretrained: str | None = (
        "auto"  # Sec. 4.1: ImageNet init; "auto" = ImageNet weights when on this machine, else random
    )
    bn_freeze: bool | None = None  # None: BatchNorm frozen exactly when the backbone is pretrained
    input_size: int | None = None  # side the backbone resizes to (None: its default)
    embedding_dim: int = 128  # Sec. 4.1: 128 (or 512)
    crop_size: int = 227  # Sec. 4.1: 227x227 crops (imagenet224 preset only)
    selection: bool = True  # Sec. 3.2 subset selection; False = Table 3 ablation (1), all k neighbours
    similarity: str = (
        "manifold"  # Eqs. 2-5; "binary" = Table 3 ablation (2), 1 inside a neighbourhood, else 0
    )
    error_def: str = "absolute"  # spec §3: residual ||x - x̂|| <= 1 - T | point_norm | literal | energy
    check: str = "all"  # spec §3: test every point of X' | "previous" (the text's X_i)
    center: str = "mean"  # spec §3: PCA centred at the mean | anchor | none
    same_image: bool = False  # spec §4: no special case for the two views of an image (True forces s = 1)
    proxy_param: str = "qr"  # spec §5: Ψ = Q diag(sign diag R) of a batched QR | orthogonal | retract
    proxy_init: str = "data"  # spec §5: ρ = f_φ of N_ρ random training images | "random"
    proxy_normalize: bool = True  # spec §5: ρ̂ = ρ/||ρ|| in the similarity and the distance
    proxy_sim_grad: bool = False  # spec §6: proxy-point similarity is a detached target
    cos_def: str = "norm"  # spec §5: cos θ = ||U_iᵀ ψ|| | "sq" (its square)
    reduction: str = "sum"  # spec §6: the sums of Eqs. 6-8 as printed | "mean"

    def __post_init__(self) -> None:
        choices = {
            "batch_unit": ("images", "embeddings"),
            "nn_space": ("momentum", "network"),
            "similarity": ("manifold", "binary"),
            "proxy_init": ("data", "random"),
            "cos_def": ("norm", "sq"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"PLM option {name}='{getattr(self, name)}' is not one of {', '.join(allowed)}"
                )
        if self.n_alpha <= self.n_beta:
            import warnings

            warnings.warn(
                f"PLM: N_alpha={self.n_alpha} <= N_beta={self.n_beta}; the paper needs N_alpha > N_beta (Sec. 4.4.3)"
            )


class PLM(Method):
    """Unsupervised DML from piecewise-linear manifold similarity with proxies (Bhatnagar & Ahuja)."""

    name = "plm"
    uses_labels = "none"
    renamed_options: ClassVar[dict[str, str]] = {"proxy_lr_mult": "proxy_lr_multiplier"}
    Config = PLMConfig
    # Sec. 4.1: Adam, lr 5e-4, 200 epochs, batch of 100 images; spec §2: no weight decay, constant schedule
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 200,
        "batch_size": 100,
        "lr": 5e-4,
        "weight_decay": 0.0,
        "optimizer": "adam",
        "scheduler": "constant",
    }

    def __init__(self, config: PLMConfig, info: BuildInfo, network: nn.Module | None = None) -> None:
        """``network`` replaces the backbone + embedding head (images -> ``[B, embedding_dim]``), e.g. in tests."""
        super().__init__()
        self.config = config = config or PLMConfig()
        crop = {"crop_size": config.crop_size} if info.views_preset == "imagenet224" else {}
        self.views = Views(info.views_preset, config.views, **crop, augmentations=info.augmentations,
                           strength=info.view_strength)
        self.network = network if network is not None else _embedding_network(config, info)
        self.momentum_encoder = copy.deepcopy(self.network).requires_grad_(False).eval()  # f_φ (Sec. 3.1.2)
        self.proxies = ManifoldProxies(
            config.n_proxies,
            config.embedding_dim,
            config.piece_dim,
            config.proxy_param,
            config.proxy_normalize,
        )
        self.register_buffer("proxies_initialised", torch.tensor(config.proxy_init == "random"))
        self.neighbours: Tensor | None = None

    def train(self, mode: bool = True) -> PLM:
        super().train(mode)
        self.momentum_encoder.eval()  # f_φ only follows θ through Eq. 1
        return self

    # -- Sec. 3.1.1: nearest-neighbour batches ------------------------------------------------
    def refresh(self, context: RefreshContext) -> None:
        """Neighbour table of the training split (``group_size`` per row, self first) and, once, the proxies."""
        encoder = self.momentum_encoder if self.config.nn_space == "momentum" else self.network
        embeddings = context.embed(lambda images: l2_normalize(encoder(self.views.eval_transform(images))))
        _, self.neighbours = context.knn(embeddings, self.config.group_size)
        if not bool(self.proxies_initialised):
            gen = seeded_generator(context.seed, context.epoch, 3)
            n = embeddings.shape[0]
            pick = (
                torch.randperm(n, generator=gen)[: self.config.n_proxies]
                if n >= self.config.n_proxies
                else torch.randint(n, (self.config.n_proxies,), generator=gen)
            )
            self.proxies.initialise(embeddings[pick].to(self.proxies.location))
            self.proxies_initialised.fill_(True)

    def batch_sampler(self, dataset, batch_size: int, seed: int, epoch: int) -> Iterable[list[int]]:
        from dmlkit.data.samplers import NeighbourGroupSampler

        if self.neighbours is None:
            raise RuntimeError("PLM needs its neighbour table: call refresh(context) before batch_sampler")
        images = batch_size if self.config.batch_unit == "images" else batch_size // self.config.views
        return NeighbourGroupSampler(self.neighbours, images, seed=seed, epoch=epoch)

    # -- Secs. 3.2-3.6: pieces -> similarities -> losses ---------------------------------------
    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.config
        images = batch["image"]
        views = self.views(images)  # [V*B, C, H, W], view-major
        z = l2_normalize(self.network(views))  # f_θ
        with torch.no_grad():
            x = l2_normalize(self.momentum_encoder(views))  # f_φ builds the manifold (Sec. 3.1.2)
        pieces = batch_pieces(
            x,
            cfg.piece_dim,
            cfg.piece_neighbours,
            cfg.threshold,
            cfg.selection,
            cfg.error_def,
            cfg.check,
            cfg.center,
        )  # Sec. 3.2
        same = torch.arange(images.shape[0], device=x.device).repeat(cfg.views) if cfg.same_image else None
        binary = cfg.similarity == "binary"
        s = point_similarity(pieces, cfg.n_alpha, cfg.n_beta, binary, same)  # Eqs. 2-5
        rho, psi = self.proxies.locations(), self.proxies.bases()
        s_proxy = proxy_similarity(
            pieces, rho, psi, cfg.n_alpha, cfg.n_beta, binary, cfg.threshold
        )  # Sec. 3.5
        if not cfg.proxy_sim_grad:
            s_proxy = s_proxy.detach()  # a target: ρ learns from distances (Eq. 7), Ψ from angles (Eq. 8)
        cosines = basis_angle_cosine(pieces.bases, psi, squared=cfg.cos_def == "sq")
        parts = {
            "point": point_point_loss(z, s, cfg.delta, cfg.reduction),  # Eq. 6
            "proxy": proxy_point_loss(z, rho, s_proxy, cfg.delta, cfg.reduction),  # Eq. 7
            "neighbourhood": proxy_neighbourhood_loss(s_proxy, cosines, cfg.reduction),  # Eq. 8
        }
        return {"loss": parts["point"] + parts["proxy"] + parts["neighbourhood"], **parts}  # Eq. 9

    def after_step(self) -> None:
        ema_update(self.momentum_encoder, self.network, self.config.momentum)  # Eq. 1: φ ← γφ + (1-γ)θ
        if self.config.proxy_param == "retract":
            self.proxies.retract()

    def embed(self, images: Tensor) -> Tensor:
        return l2_normalize(self.network(self.views.eval_transform(images)))

    @torch.no_grad()
    def pseudo_similarity(self, images: Tensor) -> Tensor:
        """Eq. 5 point-point similarity of the momentum encoder's embeddings of un-augmented images."""
        embeddings = l2_normalize(self.momentum_encoder(self.views.eval_transform(images)))
        return self.pseudo_supervision(embeddings)["similarity"]

    @torch.no_grad()
    def quality_embed(self, images: Tensor) -> Tensor:
        """The momentum encoder's l2-normalised embeddings: what the pieces are grown on."""
        return l2_normalize(self.momentum_encoder(self.views.eval_transform(images)))

    def quality_estimators(self) -> dict:
        """``plm-pieces``: :meth:`pseudo_supervision` under this run's options."""
        return {"plm-pieces": self.pseudo_supervision}

    def pseudo_supervision(self, embeddings: Tensor) -> dict[str, Tensor]:
        """Table 2 hook: the pieces ``X_i`` (groups) and Eq. 5 similarity of ``embeddings`` ``[b, D]`` under
        this method's options; an estimator for :func:`dmlkit.evaluation.quality.quality_table`."""
        return _pieces(self.config, embeddings)

    @classmethod
    def pseudo_supervision_estimators(cls, k: int = 10) -> dict:
        """``plm-pieces``: the pieces and Eq. 5 similarity under the paper defaults, k = ``k`` neighbours."""
        config = dataclasses.replace(PLMConfig(), piece_neighbours=k)
        return {"plm-pieces": lambda embeddings: _pieces(config, embeddings)}

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The network at ``lr``; proxies and their bases at ``proxy_lr_multiplier * lr`` (Sec. 4.1)."""
        return [
            {
                "params": [p for p in self.network.parameters() if p.requires_grad],
                "lr": lr,
                "weight_decay": weight_decay,
            },
            {
                "params": list(self.proxies.parameters()),
                "lr": lr * self.config.proxy_lr_multiplier,
                "weight_decay": 0.0,
            },
        ]


def _pieces(cfg: PLMConfig, embeddings: Tensor) -> dict[str, Tensor]:
    """:func:`manifold_estimate` of ``embeddings`` ``[b, D]`` under the options ``cfg``."""
    return manifold_estimate(
        embeddings,
        cfg.piece_neighbours,
        cfg.piece_dim,
        cfg.threshold,
        cfg.n_alpha,
        cfg.n_beta,
        cfg.selection,
        cfg.similarity == "binary",
        cfg.error_def,
        cfg.check,
        cfg.center,
    )


def _embedding_network(config: PLMConfig, info: BuildInfo) -> nn.Module:
    """Backbone + linear embedding head (Sec. 4.1); the method L2-normalises the output."""
    size = config.crop_size if info.views_preset == "imagenet224" else info.image_size
    backbone = build_method_backbone(config.backbone, info, config.pretrained, config.bn_freeze, config.input_size,
                                     paper="googlenet", image_size=size)
    return nn.Sequential(backbone, EmbeddingHead(backbone.out_dim, config.embedding_dim))
