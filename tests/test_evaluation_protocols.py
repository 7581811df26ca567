"""EVALUATION.md §6 / §8.8: MLRC aggregation and the zero-shot helper."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmlkit.data.base import DMLDataset
from dmlkit.evaluation import evaluate
from dmlkit.evaluation.protocols import (
    concatenate_normalised,
    mean_confidence_interval,
    mlrc_aggregate,
    mlrc_from_embeddings,
    zero_shot_evaluate,
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


def test_zero_shot_evaluate_embeds_in_batches_and_reads_true_labels():
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(30, 1, 4, 4, generator=g) * 255).to(torch.uint8).numpy()
    true = np.repeat(np.arange(5), 6)
    test = DMLDataset(images, labels=np.full(30, -1), true_labels=true, recall_at=(1, 2))
    calls = []

    def embed(x):
        calls.append(len(x))
        return x.flatten(1) * 2

    out = zero_shot_evaluate(embed, test, batch_size=8, nmi=False)
    assert calls == [8, 8, 8, 6]
    flat = torch.from_numpy(images).float().div(255).flatten(1) * 2
    assert out == evaluate(flat, true, (1, 2), nmi=False)
    query = DMLDataset(images[:10], labels=true[:10], recall_at=(1, 2))
    sep = zero_shot_evaluate(embed, test, query=query, normalize=True, nmi=False)
    assert sep == evaluate(F.normalize(flat, dim=1), true, (1, 2), nmi=False,
                           query_embeddings=F.normalize(flat[:10], dim=1), query_labels=true[:10])


def test_mean_confidence_interval():
    mean, half = mean_confidence_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / np.sqrt(3), abs=1e-5)
