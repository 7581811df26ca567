"""Pseudo-supervision quality (PLM.md §8): purity, φ / Pearson correlation, pair precision and recall."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmlkit.evaluation.quality import (
    format_quality_table,
    group_purity_sums,
    partition_pair_stats,
    quality_table,
    similarity_pair_stats,
)


def brute_pairs(labels, s):
    n = len(labels)
    iu = np.triu_indices(n, 1)
    g = (np.asarray(labels)[:, None] == np.asarray(labels)[None, :])[iu].astype(float)
    return g, np.asarray(s, dtype=float)[iu]


def test_partition_phi_equals_pearson_over_all_pairs():
    rng = np.random.default_rng(0)
    y, c = rng.integers(0, 4, 60), rng.integers(0, 5, 60)
    same_cluster = (c[:, None] == c[None, :]).astype(float)
    g, s = brute_pairs(y, same_cluster)
    expected = np.corrcoef(g, s)[0, 1]
    assert partition_pair_stats(y, c).correlation() == pytest.approx(expected, abs=1e-12)
    assert similarity_pair_stats(y, same_cluster).correlation() == pytest.approx(expected, abs=1e-12)
    stats = partition_pair_stats(y, c)
    assert stats.n == 60 * 59 / 2
    assert stats.precision() == pytest.approx((g * s).sum() / s.sum())
    assert stats.recall() == pytest.approx((g * s).sum() / g.sum())


def test_soft_similarity_correlation_and_threshold_counts():
    y = [0, 0, 1, 1]
    s = np.array([[1, .9, .2, .6], [.9, 1, .1, .3], [.2, .1, 1, .8], [.6, .3, .8, 1]])
    g, sv = brute_pairs(y, s)
    stats = similarity_pair_stats(y, s, threshold=0.5)
    assert stats.correlation() == pytest.approx(np.corrcoef(g, sv)[0, 1], abs=1e-12)
    # pairs >= .5: (0,1) .9 same, (0,3) .6 different, (2,3) .8 same -> precision 2/3, recall 2/2
    assert stats.precision() == pytest.approx(2 / 3) and stats.recall() == 1.0


def test_constant_similarity_gives_nan_with_warning():
    with pytest.warns(UserWarning, match="constant"):
        assert math.isnan(similarity_pair_stats([0, 0, 1], np.ones((3, 3))).correlation())


def test_purity_hand_examples():
    y = [0, 0, 1, 1, 1]
    num, den, _ = group_purity_sums(y, np.array([0, 0, 0, 1, 1]))
    assert num / den == pytest.approx(0.8)  # (2 + 2) / 5
    num, den, _ = group_purity_sums(y, np.array([0, 0, 0, 1, 1]), "anchor")
    assert num / den == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1) / 5)
    # overlapping neighbourhoods X_i (PLM): X_0={0,1,2}, X_1={1,0}, X_2={2,3}, X_3={3,0}
    y4, groups = [0, 0, 1, 1], [[0, 1, 2], [1, 0], [2, 3], [3, 0]]
    num, den, total = group_purity_sums(y4, groups)
    assert num / den == pytest.approx(7 / 9) and total == 9
    padded = torch.tensor([[0, 1, 2], [1, 0, -1], [2, 3, -1], [3, 0, -1]])
    assert group_purity_sums(y4, padded) == (num, den, total)
    num, den, _ = group_purity_sums(y4, groups, "anchor")
    assert num / den == pytest.approx((2 / 3 + 1 + 1 + 0.5) / 4)


def separated(n_classes=5, per_class=40, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    return torch.randn(n_classes, dim, generator=g)[y] * 10 + 0.01 * torch.randn(len(y), dim, generator=g), y


def test_quality_table_batches_baselines_and_custom_estimators():
    x, y = separated()
    seen = []

    def gaussian_similarity(xb):
        seen.append(len(xb))
        return torch.exp(-torch.cdist(xb, xb) ** 2)

    def random_labels(xb):
        return torch.randint(0, 3, (len(xb),), generator=torch.Generator().manual_seed(1))

    rows = quality_table(x, y, {"gauss": gaussian_similarity, "random": random_labels}, batch_size=50)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"kmeans", "agglomerative", "gauss", "random"}
    assert seen == [50, 50, 50, 50]  # never more than a batch at once
    assert by["agglomerative"]["purity"] == 1.0 and by["agglomerative"]["correlation"] == pytest.approx(1.0)
    assert by["gauss"]["purity"] is None and by["gauss"]["correlation"] > 0.99
    assert by["gauss"]["pair_precision"] == 1.0 and by["gauss"]["pair_recall"] == 1.0
    assert abs(by["random"]["correlation"]) < 0.3
    assert all(r["num_items"] == 200 and r["num_pairs"] == 4 * 50 * 49 // 2 for r in rows)
    table = format_quality_table(rows)
    assert table.splitlines()[0].startswith("| method | purity") and "| gauss | – |" in table


def test_quality_table_groups_and_similarity_dict_and_full_scope_guard():
    x, y = separated(per_class=4)

    def knn_groups(xb):
        d = torch.cdist(xb, xb)
        return {"groups": d.topk(3, largest=False).indices, "similarity": (d < 1).double()}

    row = quality_table(x, y, {"plm-like": knn_groups}, baselines=(), scope="full")[0]
    assert row["purity"] == 1.0 and row["mean_group_size"] == 3.0 and row["correlation"] == pytest.approx(1.0)
    big = torch.randn(5000, 2)
    with pytest.raises(ValueError, match="scope='batch'"):
        quality_table(big, torch.zeros(5000, dtype=torch.long), {"s": lambda xb: torch.zeros(len(xb), len(xb))},
                      baselines=(), scope="full")
    with pytest.raises(ValueError, match="must return"):
        quality_table(x, y, {"bad": lambda xb: torch.zeros(3)}, baselines=(), batch_size=10)


def test_stage_pseudo_label_rows_score_the_pool_per_round(tmp_path):
    from dmlkit.engine.quality import stage_label_rows

    truth = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    rounds = {2: [-1, 5, 5, 5, 7, 7, -1, 7], 10: [-1, 1, 1, 2, 2, 2, -1, 3]}  # -1: a labeled item (not in the pool)
    for r, pseudo in rounds.items():
        torch.save({"round": r, "pseudo_labels": torch.tensor(pseudo)}, tmp_path / f"stage-pseudo-labels-round-{r}.pt")
    first, second = stage_label_rows(tmp_path, truth)
    # round 2, pool items 1-5 and 7: clusters {0, 0, 1} and {1, 1, 2}; 15 pairs, 6 same-cluster, 4 same-class, 2 both
    assert first["method"] == "stage-pseudo-labels-round-2 (whole pool)" and first["num_items"] == 6
    assert first["purity"] == pytest.approx(4 / 6) and first["mean_group_size"] == 3
    assert first["pair_precision"] == pytest.approx(2 / 6) and first["pair_recall"] == pytest.approx(2 / 4)
    assert first["num_pairs"] == 15
    assert second["method"].startswith("stage-pseudo-labels-round-10") and second["purity"] == 1.0  # numeric order
    with pytest.raises(ValueError, match="holds 8 labels but the run's training split has 7"):
        stage_label_rows(tmp_path, truth[:7])
