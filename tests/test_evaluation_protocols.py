"""EVALUATION.md §6 / §8.8: MLRC aggregation and the zero-shot helper."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmlkit.evaluation import evaluate
from dmlkit.evaluation.protocols import (
    concatenate_normalised,
    mlrc_aggregate,
    mlrc_from_embeddings,
)


def folds(n=80, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(8).repeat_interleave(n // 8)
    centres = torch.randn(8, dim, generator=g)
    return [centres[y] + 0.8 * torch.randn(n, dim, generator=g) for _ in range(4)], y


def test_concatenated_vectors_have_norm_two_before_renormalisation():
    per_fold, _ = folds()
    joined = concatenate_normalised(per_fold)
    assert joined.shape == (80, 48)
    assert torch.allclose(joined.norm(dim=1), torch.full((80,), 2.0), atol=1e-6)


def test_separated_is_the_mean_of_per_fold_metrics_and_concatenated_is_one_evaluation():
    per_fold, y = folds()
    out = mlrc_aggregate(per_fold, y)
    singles = [evaluate(F.normalize(f, dim=1), y, (1,), nmi=False) for f in per_fold]
    for key in ("precision@1", "r_precision", "map@r"):
        assert out["separated"][key] == pytest.approx(np.mean([s[key] for s in singles]), abs=1e-12)
    assert out["concatenated"] == evaluate(F.normalize(torch.cat([F.normalize(f, dim=1) for f in per_fold], 1), dim=1),
                                           y, (1,), nmi=False)
    # four models are better together than apart on this data
    assert out["concatenated"]["map@r"] > out["separated"]["map@r"]


def test_identical_models_concatenate_to_the_same_metrics():
    per_fold, y = folds()
    out = mlrc_aggregate([per_fold[0]] * 4, y)
    assert out["concatenated"] == pytest.approx(out["separated"], abs=1e-9)


def test_mlrc_from_embeddings_checks_the_number_of_runs_and_alignment():
    per_fold, y = folds()
    with pytest.raises(ValueError, match="needs 4 runs"):
        mlrc_from_embeddings(per_fold[:3], y)
    with pytest.raises(ValueError, match="same test items"):
        mlrc_from_embeddings([f[:40] if i == 0 else f for i, f in enumerate(per_fold)], y)
    assert set(mlrc_from_embeddings([f.numpy() for f in per_fold], y.numpy())) == {"separated", "concatenated", "per_model"}
