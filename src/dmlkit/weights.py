"""Loading ``.pt`` files without unpickling code (``torch.load(weights_only=True)``), for every layer:
the engine's checkpoints, a method's stage weights (SLADE's ``teacher_weights``)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read. The CLI exits with code 2."""


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a file written by `dmlkit train`")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before it refuses a file
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle.UnpicklingError, RuntimeError from a truncated zip, ...
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain dmlkit checkpoint (tensors and plain values only); "
            f"it may be truncated, from another program, or crafted to run code ({type(error).__name__}: "
            f"{(str(error).splitlines() or [type(error).__name__])[0][:200]})"
        ) from None
