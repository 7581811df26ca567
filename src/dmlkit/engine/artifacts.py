"""The engine's side of :class:`dmlkit.methods.base.Artifact`: a method asks, the engine writes.

After every ``refresh`` the engine logs a change of ``method.phase()`` and writes what
``method.take_artifacts()`` returns into the run directory: ``.pt`` files atomically, maps with
:func:`dmlkit.viz.pool_map` (a picture that fails is a warning, never a failed run).
"""
from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from dmlkit.engine.checkpoint import atomic_torch_save
from dmlkit.methods.base import Artifact

log = logging.getLogger("dmlkit")


def artifact_path(run_dir: str | Path, name: str) -> Path:
    """``run_dir / name``; ValueError for a name that is absolute or climbs out of the run directory."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise ValueError(f"artifact name {name!r} must be a relative path inside the run directory")
    return Path(run_dir, *parts)


def write_artifacts(artifacts: list[Artifact], run_dir: str | Path) -> list[Path]:
    """Write each artifact below ``run_dir``; returns the paths written."""
    from dmlkit.viz import pool_map

    written = []
    for artifact in artifacts:
        path = artifact_path(run_dir, artifact.name)
        if artifact.tensors is not None:
            atomic_torch_save(artifact.tensors, path)
        elif artifact.points is not None:
            try:
                pool_map(*artifact.points, path, seed=artifact.seed, title=artifact.title)
            except (ValueError, RuntimeError, OSError) as error:  # a picture never sinks a run
                log.warning("picture %s: %s", path.name, error)
                continue
        else:
            raise ValueError(f"artifact {artifact.name!r} has neither tensors nor points")
        written.append(path)
    return written
