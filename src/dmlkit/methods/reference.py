"""Two reference methods that prove the pipe end to end.

``initial``: no training; the backbone's pooled features as they are (the pretrained network's by the
one backbone rule, :func:`dmlkit.methods.base.default_backbone`), as in the "Initial" rows of SSDML's
tables; ``embedding_dim=N`` adds a random linear N-d head (L2-normalised) instead.
``supervised``: a pytorch-metric-learning loss by name on
m-per-class batches — the fully supervised baseline every label-scarce method is compared with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from dmlkit.data.labels import label_map
from dmlkit.methods.base import BuildInfo, Method, build_method_backbone


def build_embedder(backbone: str, embedding_dim: int | None, info: BuildInfo, pretrained: str | None = "auto",
                   normalize: bool = True, *, bn_freeze: bool | None = None,
                   input_size: int | None = None) -> tuple[nn.Module, nn.Module]:
    """Backbone by the one rule (:func:`dmlkit.methods.base.build_method_backbone`) and a linear embedding
    head (``nn.Identity`` when ``embedding_dim`` is None: the pooled features as they are)."""
    from dmlkit.models import EmbeddingHead

    net = build_method_backbone(backbone, info, pretrained, bn_freeze, input_size)
    if embedding_dim is None:
        return net, nn.Identity()
    return net, EmbeddingHead(net.out_dim, embedding_dim, normalize=normalize)


def build_loss(name: str, num_classes: int, embedding_dim: int) -> nn.Module:
    """The base losses DRML wraps (``triplet``, ``margin``, ``proxy_anchor``, ``cosface``, with their
    miners: :func:`dmlkit.losses.supervised.build_metric_loss`), else any pytorch-metric-learning loss
    class by name with its defaults."""
    from pytorch_metric_learning import losses

    from dmlkit.losses.supervised import LOSS_ALIASES, build_metric_loss

    if name.lower().replace("-", "_") in LOSS_ALIASES:
        return build_metric_loss(name, num_classes, embedding_dim)
    if not hasattr(losses, name):
        raise ValueError(f"unknown loss '{name}': use triplet, margin, proxy_anchor, cosface or a "
                         "pytorch-metric-learning loss class name (e.g. MultiSimilarityLoss)")
    return getattr(losses, name)()


@dataclass
class InitialConfig:
    backbone: str = "auto"  # the network the method under comparison starts from (methods.base.default_backbone)
    embedding_dim: int | None = None  # None: pooled features as they are; N: a random FC(out x N) -> l2 head
    pretrained: str | None = "auto"  # ImageNet weights when on this machine; None = random; or a weights file
    bn_freeze: bool | None = None  # None: BatchNorm frozen exactly when the backbone is pretrained
    input_size: int | None = None  # side the backbone resizes to (None: its default, Lite0 >= 64 px)


class InitialMethod(Method):
    """No training: evaluates the untrained or pretrained embedding ("Initial" rows)."""

    name = "initial"
    uses_labels = "none"
    trains = False
    Config = InitialConfig
    defaults: ClassVar[dict[str, Any]] = {"epochs": 1, "batch_size": 128, "lr": 0.0, "optimizer": "adam",
                                          "scheduler": "constant", "weight_decay": 0.0}

    def __init__(self, config: InitialConfig, info: BuildInfo) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.head = build_embedder(config.backbone, config.embedding_dim, info, config.pretrained,
                                                  bn_freeze=config.bn_freeze, input_size=config.input_size)
        from dmlkit.data.views import Views

        self.views = Views(info.views_preset, 1, augmentations=info.augmentations,
                           strength=info.view_strength)

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise RuntimeError("the 'initial' method does not train")

    def embed(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(self.views.eval_transform(images)))


@dataclass
class SupervisedConfig:
    loss: str = "MultiSimilarityLoss"  # triplet, margin, proxy_anchor, cosface, or a pytorch-metric-learning loss
    miner: str | None = None  # optional pytorch-metric-learning miner class name
    backbone: str = "auto"  # "auto": methods.base.default_backbone (Lite0 ImageNet where installed)
    embedding_dim: int = 128  # size of the linear embedding head
    pretrained: str | None = "auto"  # ImageNet weights when on this machine; None = random; or a weights file
    bn_freeze: bool | None = None  # None: BatchNorm frozen exactly when the backbone is pretrained
    input_size: int | None = None  # side the backbone resizes to (None: its default)
    samples_per_class: int | None = None  # m of m-per-class batches; None: P = min(classes, batch/4), m = batch/P
    normalize: bool = True  # L2-normalise the embedding
    proxy_lr_multiplier: float = 100.0  # learning-rate multiplier of the loss's own parameters (proxies)


class SupervisedMethod(Method):
    """A pytorch-metric-learning loss by name on m-per-class batches (labels required)."""

    name = "supervised"
    uses_labels = "all"
    Config = SupervisedConfig
    defaults: ClassVar[dict[str, Any]] = {"epochs": 10, "batch_size": 128, "lr": 1e-3, "weight_decay": 1e-4,
                                          "optimizer": "adamw", "scheduler": "cosine"}

    def __init__(self, config: SupervisedConfig, info: BuildInfo) -> None:
        super().__init__()
        from pytorch_metric_learning import miners

        from dmlkit.data.views import Views

        self.config = config
        self.backbone, self.head = build_embedder(config.backbone, config.embedding_dim, info, config.pretrained,
                                                  normalize=config.normalize, bn_freeze=config.bn_freeze,
                                                  input_size=config.input_size)
        self.views = Views(info.views_preset, 1, augmentations=info.augmentations,
                           strength=info.view_strength)
        self.loss_fn = build_loss(config.loss, info.num_classes, config.embedding_dim)
        self.miner = getattr(miners, config.miner)() if config.miner else None
        self._label_map: Tensor | None = None

    def batch_sampler(self, dataset, batch_size: int, seed: int, epoch: int):
        from dmlkit.data.samplers import MPerClassBatchSampler

        m = self.config.samples_per_class
        if m is None:
            classes = len(set(dataset.labels.tolist()) - {-1})
            m = batch_size // max(1, min(classes, batch_size // 4))
        elif batch_size % m:
            raise ValueError(f"batch_size {batch_size} is not a multiple of samples_per_class {m}")
        return MPerClassBatchSampler(dataset.labels, batch_size // m, m, seed=seed, epoch=epoch)

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        images, labels = self.views(batch["image"]), batch["label"]
        embeddings = self.head(self.backbone(images))
        labels = self._contiguous(labels)
        if self.miner is not None:
            return {"loss": self.loss_fn(embeddings, labels, self.miner(embeddings, labels))}
        return {"loss": self.loss_fn(embeddings, labels)}

    def _contiguous(self, labels: Tensor) -> Tensor:
        """Class ids 0..C-1 for losses with a proxy/weight table."""
        if self._label_map is None:
            return labels
        return self._label_map.to(labels.device)[labels]

    def refresh(self, context) -> None:
        if self._label_map is None:
            self._label_map = label_map(context.train.labels)

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        groups = [{"params": list(self.backbone.parameters()) + list(self.head.parameters()), "lr": lr,
                   "weight_decay": weight_decay}]
        loss_params = [p for p in self.loss_fn.parameters() if p.requires_grad]
        if loss_params:
            groups.append({"params": loss_params, "lr": lr * self.config.proxy_lr_multiplier, "weight_decay": 0.0})
        return groups

    def embed(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(self.views.eval_transform(images)))
