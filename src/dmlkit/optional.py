"""Optional dependencies, imported only where used, with a one-line fix when missing."""
from __future__ import annotations

from types import ModuleType


def import_faiss() -> ModuleType:
    """The ``faiss`` module, for ``backend="faiss"`` searches. dmlkit's default path never needs it."""
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "the 'faiss' backend needs faiss: pip install 'dmlkit[faiss]' (or faiss-cpu), or use backend='torch'"
        ) from None
    return faiss


def has_faiss() -> bool:
    """Whether ``import faiss`` works (``backend="auto"`` then uses it)."""
    try:
        import_faiss()
    except ImportError:
        return False
    return True
