"""The parts of ``evaluate`` one by one (neighbours, recall, P@K, RP / MAP@R, NMI) and the one k-means."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from dmlkit.evaluation.metrics import clustering_nmi, precision_at_k, r_precision_and_map_at_r, recall_at_k
from dmlkit.evaluation.ranking import _exact_relevance, neighbour_relevance, ranked_relevance
from dmlkit.kmeans import kmeans, lloyd

REL = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)


def test_recall_at_k_by_hand_and_beyond_the_list():
    out = recall_at_k(REL, (1, 2, 5))
    assert out["recall@1"].tolist() == [0, 0, 1] and out["recall@2"].tolist() == [1, 0, 1]
    assert out["recall@5"].tolist() == [1, 0, 1]
    beyond = recall_at_k(REL, (5, 7), first_rank=torch.tensor([2, 7, 1]))  # row 1's first hit at rank 7
    assert beyond["recall@5"].tolist() == [1, 0, 1] and beyond["recall@7"].tolist() == [1, 1, 1]


def test_precision_at_k_by_hand():
    out = precision_at_k(REL.to(torch.int32).cumsum(1), (1, 4))
    assert out["precision@1"].tolist() == [0, 0, 1]
    assert out["precision@4"].tolist() == pytest.approx([2 / 4, 0, 3 / 4])


def test_r_precision_and_map_at_r_by_hand():
    out = r_precision_and_map_at_r(REL, torch.tensor([3, 2, 4]))
    # row 0, R=3: rel 0,1,0 -> RP 1/3, MAP@R (1/3)(1/2); row 1: 0; row 2, R=4: 1,0,1,1 -> RP 3/4,
    # MAP@R (1/4)(1/1 + 2/3 + 3/4)
    assert out["r_precision"].tolist() == pytest.approx([1 / 3, 0, 3 / 4])
    assert out["map@r"].tolist() == pytest.approx([1 / 6, 0, (1 + 2 / 3 + 3 / 4) / 4])


def _slow_relevance(d: torch.Tensor, rel: torch.Tensor, k: int) -> torch.Tensor:
    """From the definition: each row sorted by (distance, column), the first k relevances."""
    out = []
    for row, r in zip(d.tolist(), rel.tolist()):
        order = sorted(range(len(row)), key=lambda j: (row[j], j))[:k]
        out.append([r[j] for j in order])
    return torch.tensor(out, dtype=torch.bool)


@pytest.mark.parametrize("threads", [1, 2])
def test_relevance_key_path_equals_the_definition_under_heavy_ties(threads):
    g = torch.Generator().manual_seed(5)
    d = torch.randint(0, 6, (300, 200), generator=g).float()  # integer distances: ties everywhere
    d[torch.arange(150), torch.arange(150)] = float("inf")  # removed self-matches
    d[0, :5] = -0.0  # clamped rounding errors may be -0.0: ranked as 0.0
    rel = torch.rand(300, 200, generator=g) < 0.3
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = ranked_relevance(d, rel, 80)  # k >= 64: the key path, rows split over threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, _slow_relevance(d, rel, 80))


def test_exact_relevance_orders_equal_distances_by_column():
    d = np.array([[2.0, 1.0, 1.0, 1.0, 0.0]], dtype=np.float32)
    rel = np.array([[True, False, True, False, False]])
    assert _exact_relevance(d, rel, 4).tolist() == [[False, False, True, False]]  # columns 4, 1, 2, 3


def test_neighbour_relevance_lists_and_first_rank_beyond_the_list():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, generator=g)
    y = torch.arange(40) % 4
    d = torch.cdist(x, x) ** 2
    d.fill_diagonal_(float("inf"))
    expected = _slow_relevance(d, y.unsqueeze(1) == y.unsqueeze(0), 39)
    for start, relevant, rank in neighbour_relevance(x, None, y, y, 3, chunk=16):
        rows = slice(start, start + relevant.shape[0])
        assert torch.equal(relevant, expected[rows, :3])
        first = expected[rows].to(torch.int8).argmax(1) + 1  # every query has 9 relevant items
        assert torch.equal(rank, first)


def test_clustering_nmi_equals_sklearn_nmi_of_the_same_clusters():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(6).repeat_interleave(25)
    x = (torch.randn(6, 4, generator=g) * 1.5)[y] + torch.randn(150, 4, generator=g)
    clusters = kmeans(x, 6, seed=3)
    assert clustering_nmi(x, y, seed=3) == pytest.approx(normalized_mutual_info_score(y, clusters), abs=1e-12)


def _textbook_lloyd(x, centroids, iters):
    """Full assignment every round, every cluster its mean, an empty one re-seeded with the farthest point."""
    centroids = centroids.clone()

    def assign():
        d = torch.cdist(x, centroids) ** 2
        labels = d.argmin(1)
        dist = d.gather(1, labels.unsqueeze(1)).squeeze(1)
        empty = torch.nonzero(torch.bincount(labels, minlength=len(centroids)) == 0).flatten()
        if len(empty):
            far = torch.argsort(dist, descending=True, stable=True)[: len(empty)]
            centroids[empty] = x[far]
            labels[far] = empty
        return labels

    labels = assign()
    for _ in range(iters):
        for c in range(len(centroids)):
            centroids[c] = x[labels == c].mean(0)
        new = assign()
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def test_pruned_lloyd_with_refill_equals_the_textbook_loop():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    start = torch.cat([x[:20], x[:4] + 100.0])  # 4 far centroids start empty and are re-seeded
    for iters in (1, 4, 50):
        labels, _, _ = lloyd(x, start, iters, refill_empty=True)
        assert torch.equal(labels, _textbook_lloyd(x, start, iters))


def test_kmeans_finds_the_partition_sklearn_finds_on_separated_data():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(5).repeat_interleave(30)
    x = (torch.randn(5, 8, generator=g) * 10)[y] + torch.randn(150, 8, generator=g)
    ours = kmeans(x, 5, init="k-means++", seed=0)
    theirs = KMeans(n_clusters=5, n_init=1, random_state=0).fit_predict(x.double().numpy())
    assert normalized_mutual_info_score(theirs, ours) == pytest.approx(1.0)
    assert normalized_mutual_info_score(y, ours) == pytest.approx(1.0)


def test_a_reseeded_centroid_is_offered_to_points_of_clusters_that_did_not_move():
    # A (mean 12.5) holds 50, its farthest point; B (mean 88.25) holds 53; the empty C is re-seeded at
    # 50. B keeps its members and does not move, yet 53 is nearer to C (3) than to B (35.25): it must
    # switch, though neither its own centroid nor C moved in the update.
    x = torch.tensor([0.0, -1.0, 1.0, 50.0, 53.0, 100.0, 101.0, 99.0], dtype=torch.float64).unsqueeze(1)
    start = torch.tensor([[12.5], [88.25], [1000.0]], dtype=torch.float64)
    labels, centroids, _ = lloyd(x, start, 1, refill_empty=True)
    assert labels.tolist() == [0, 0, 0, 2, 2, 1, 1, 1]
    assert centroids[:, 0].tolist() == [0.0, 88.25, 50.0]  # the update before the last assignment
    assert torch.equal(labels, _textbook_lloyd(x, start, 1))
