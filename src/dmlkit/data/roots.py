"""Where datasets live: explicit root, then ``$DMLKIT_DATA``, then Debian packages, then the user cache.

For every base folder the dataset's own sub-folder names are tried too, so ``--data-root ~/data``
finds ``~/data/CUB_200_2011`` as well as a root that *is* the dataset folder.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from dmlkit.data.base import DatasetError

ENV_VAR = "DMLKIT_DATA"
#: datasets that a Debian package installs (package name, folder)
DEBIAN = {"fashion-mnist": ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist")}


def cache_dir(name: str) -> Path:
    """The user cache folder of a dataset: ``$XDG_CACHE_HOME/dmlkit/<name>`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dmlkit" / name


def search_bases(name: str, root: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """The base folders searched for ``name``, in order, with where each came from."""
    bases: list[tuple[str, Path]] = []
    if root:
        bases.append(("--data-root", Path(root).expanduser()))
    if os.environ.get(ENV_VAR):
        bases.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()))
    if name in DEBIAN:
        bases.append((f"Debian package {DEBIAN[name][0]}", Path(DEBIAN[name][1])))
    bases.append(("user cache", cache_dir(name)))
    return bases


def find_dataset(
    name: str,
    root: str | os.PathLike | None,
    probe: Callable[[Path], bool],
    subdirs: Sequence[str],
    how_to_get: str,
) -> Path:
    """The first folder (each base, then each ``base/<subdir>``) for which ``probe`` is true.

    Raises:
        DatasetError: naming every folder looked at and how to get the data.
    """
    looked: list[str] = []
    for origin, base in search_bases(name, root):
        for folder in [base, *(base / s for s in subdirs)]:
            if folder.is_dir() and probe(folder):
                return folder
            looked.append(f"{folder} ({origin})")
    raise DatasetError(
        f"dataset '{name}' not found. Looked in: {'; '.join(looked)}. {how_to_get} "
        f"Then pass --data-root PATH or set ${ENV_VAR}."
    )
