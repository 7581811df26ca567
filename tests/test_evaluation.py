"""EVALUATION.md §8: worked examples, invariants, parity with PML / scikit-learn / a slow loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from dmlkit.evaluation import evaluate, kmeans, knn_search, nmi_score, retrieval_scores

EX2_X = torch.tensor([0.0, 1.0, 2.5, 4.0, 4.2, 1.0], dtype=torch.float64).unsqueeze(1)
EX2_Y = torch.tensor([0, 0, 1, 1, 0, 1])  # a, a, b, b, a, b


def slow_lists(query: np.ndarray, gallery: np.ndarray, same: bool) -> list[list[int]]:
    """Ranked gallery indices from the definition: direct distances, sort by (distance, index)."""
    lists = []
    for qi, q in enumerate(query):
        d = np.sqrt(((gallery - q) ** 2).sum(1))
        order = sorted(range(len(gallery)), key=lambda j: (d[j], j))
        lists.append([j for j in order if not (same and j == qi)])
    return lists


def slow_metrics(query, q_labels, gallery, g_labels, same, ks):
    """Recall@K, P@1, RP, MAP@R averaged over non-lone queries, straight from the definitions."""
    out = {f"recall@{k}": [] for k in ks} | {"precision@1": [], "r_precision": [], "map@r": []}
    for qi, ranked in enumerate(slow_lists(query, gallery, same)):
        rel = [int(g_labels[j] == q_labels[qi]) for j in ranked]
        r = sum(rel)
        if r == 0:
            continue
        for k in ks:
            out[f"recall@{k}"].append(float(any(rel[:k])))
        out["precision@1"].append(rel[0])
        out["r_precision"].append(sum(rel[:r]) / r)
        out["map@r"].append(sum(sum(rel[: i + 1]) / (i + 1) for i in range(r) if rel[i]) / r)
    return {k: float(np.mean(v)) for k, v in out.items()}


# --- §8.1 worked example 1 -------------------------------------------------------------------
def test_worked_example_1_scores():
    s = retrieval_scores(torch.tensor([[0, 1, 1, 0, 1]], dtype=torch.bool), torch.tensor([3]), (1, 2, 4), (1, 5))
    assert [float(s[f"recall@{k}"]) for k in (1, 2, 4)] == [0.0, 1.0, 1.0]
    assert float(s["precision@1"]) == 0.0
    assert float(s["precision@5"]) == pytest.approx(0.6)  # OML's precision@5 would be 3/min(5,3) = 1.0
    assert float(s["r_precision"]) == pytest.approx(2 / 3)
    assert float(s["map@r"]) == pytest.approx(7 / 18)
    assert round(float(s["map@r"]), 6) == 0.388889


def test_worked_example_1_through_evaluate_with_separate_query_set():
    gallery = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=torch.float64)
    out = evaluate(gallery, [1, 0, 0, 1, 0], recall_at=(1, 2, 4), precision_at=(5,), nmi=False,
                   query_embeddings=torch.zeros(1, 1, dtype=torch.float64), query_labels=[0])
    assert (out["recall@1"], out["recall@2"], out["recall@4"]) == (0.0, 1.0, 1.0)
    assert out["precision@5"] == pytest.approx(0.6)
    assert out["r_precision"] == pytest.approx(0.666667, abs=1e-6)
    assert out["map@r"] == pytest.approx(0.388889, abs=1e-6)


# --- §8.2 worked example 2 -------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_worked_example_2_ranked_lists(backend):
    _, idx = knn_search(EX2_X, 5, backend=backend)
    expected = [[1, 5, 2, 3, 4], [5, 0, 2, 3, 4], [1, 3, 5, 4, 0], [4, 2, 1, 5, 0], [3, 2, 1, 5, 0], [1, 0, 2, 3, 4]]
    assert idx.tolist() == expected  # query 1 keeps index 5, its duplicate at distance 0


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_worked_example_2_means_and_per_query_map(backend):
    out = evaluate(EX2_X, EX2_Y, recall_at=(1, 2, 4), precision_at=(2,), nmi=False, backend=backend)
    assert out["recall@1"] == pytest.approx(0.166667, abs=1e-6)
    assert out["recall@2"] == pytest.approx(0.666667, abs=1e-6)
    assert out["recall@4"] == 1.0
    assert out["precision@2"] == pytest.approx(1 / 3)
    assert out["r_precision"] == pytest.approx(1 / 3)
    assert out["map@r"] == pytest.approx(0.208333, abs=1e-6)
    assert out["precision@1"] == out["recall@1"]
    assert out["num_lone_queries"] == 0
    _, idx = knn_search(EX2_X, 5)
    rel = EX2_Y[idx] == EX2_Y.unsqueeze(1)
    per_query = retrieval_scores(rel, torch.full((6,), 2), (), (1,))["map@r"]
    assert per_query.tolist() == pytest.approx([0.5, 0.25, 0.25, 0.25, 0.0, 0.0])


# --- §8.3 NMI ----------------------------------------------------------------------------------
def test_nmi_worked_example_permutation_and_perfect():
    assert nmi_score([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(0.343711, abs=1e-6)
    assert nmi_score([0, 0, 1, 1], [7, 7, 7, 3]) == pytest.approx(0.343711, abs=1e-6)
    assert nmi_score([0, 0, 1, 1, 2], [5, 5, 9, 9, 1]) == pytest.approx(1.0)


def test_nmi_equals_sklearn_on_same_assignment():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y, c = rng.integers(0, 7, 200), rng.integers(0, 9, 200)
        assert nmi_score(y, c) == pytest.approx(normalized_mutual_info_score(y, c), abs=1e-12)


def clustered(n_classes=8, per_class=25, dim=16, spread=0.35, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * 2
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_kmeans_is_seeded_and_finds_separated_clusters(backend):
    x, y = clustered(spread=0.05)
    c1 = kmeans(x, 8, seed=3, n_init=3, init="random", backend=backend)
    assert torch.equal(c1, kmeans(x, 8, seed=3, n_init=3, init="random", backend=backend))
    assert nmi_score(y, c1) > 0.8  # random init may merge two clusters
    assert nmi_score(y, kmeans(x, 8, init="k-means++", n_init=3, backend=backend)) == pytest.approx(1.0)
    assert torch.equal(kmeans(x, 8, backend=backend), kmeans(x, 8, init="k-means++", backend=backend))  # auto


def test_kmeans_torch_and_faiss_run_the_same_lloyd_from_the_same_init():
    x, _ = clustered(n_classes=6, per_class=30, spread=1.2, seed=4)
    for init in ("random", "k-means++"):
        a = kmeans(x, 6, init=init, seed=1)
        b = kmeans(x, 6, init=init, seed=1, backend="faiss")
        assert nmi_score(a, b) == pytest.approx(1.0)  # same partition (ids may differ)


def test_kmeans_skipping_unmoved_centroids_equals_plain_lloyd():
    x, _ = clustered(n_classes=40, per_class=12, dim=6, spread=1.5, seed=6)
    x = x.double()  # float64: no near-ties decided by rounding
    for iters in (1, 3, 20):  # stopped mid-way and converged
        centroids = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(2))[:40]].clone()
        for _ in range(iters):  # the textbook loop: full assignment, then every centroid its mean
            assign = torch.cdist(x, centroids).argmin(dim=1)
            for c in assign.unique():
                centroids[c] = x[assign == c].mean(dim=0)
        expected = torch.cdist(x, centroids).argmin(dim=1)
        assert torch.equal(kmeans(x, 40, iters=iters, init="random", seed=2), expected)


def test_evaluate_nmi_uses_one_cluster_per_class():
    x, y = clustered(spread=0.05)
    assert evaluate(x, y, kmeans_n_init=3)["nmi"] == pytest.approx(1.0)


# --- §8.4 invariants ---------------------------------------------------------------------------
def test_invariants_on_random_data():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(120, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (120,), generator=g)
    ks = (1, 2, 4, 8, 16)
    base = evaluate(x, y, recall_at=ks, nmi=False)
    assert base["precision@1"] == base["recall@1"]
    assert all(base[f"recall@{a}"] <= base[f"recall@{b}"] for a, b in zip(ks, ks[1:]))
    assert 0 <= base["map@r"] <= base["r_precision"] <= 1
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    moved = evaluate(3.7 * x @ rotation, y, recall_at=ks, nmi=False)
    assert moved == pytest.approx(base, abs=1e-12)
    assert evaluate(x, y, recall_at=ks, nmi=False, chunk=7) == base  # chunked == unchunked, exactly
    perm = torch.randperm(120, generator=g)
    assert evaluate(x[perm], y[perm], recall_at=ks, nmi=False) == pytest.approx(base, abs=1e-12)
    gal_perm = torch.randperm(50, generator=g)
    q = dict(query_embeddings=x[:30], query_labels=y[:30], recall_at=(1, 4), nmi=False)
    sep = evaluate(x[70:], y[70:], **q)
    assert evaluate(x[70:][gal_perm], y[70:][gal_perm], **q) == pytest.approx(sep, abs=1e-12)


def test_per_query_map_at_r_never_exceeds_r_precision():
    g = torch.Generator().manual_seed(2)
    rel = torch.rand(500, 12, generator=g) < 0.4
    r = torch.randint(1, 13, (500,), generator=g)
    s = retrieval_scores(rel, r, (1,), (1,))
    assert bool((s["map@r"] <= s["r_precision"] + 1e-12).all()) and bool((s["r_precision"] <= 1).all())


# --- §8.5 parity --------------------------------------------------------------------------------
def pml_scores(query, q_labels, gallery=None, g_labels=None):
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                              k="max_bin_count")
    if gallery is None:
        return calc.get_accuracy(query, q_labels)  # reference = query, ref_includes_query=True
    return calc.get_accuracy(query, q_labels, gallery, g_labels, ref_includes_query=False)


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_parity_with_pml_accuracy_calculator(kind):
    if kind == "random":
        g = torch.Generator().manual_seed(5)
        x, y = torch.randn(300, 16, generator=g), torch.randint(0, 12, (300,), generator=g)
    else:
        x, y = clustered(n_classes=10, per_class=30, spread=1.0)
    ours = evaluate(x, y, nmi=False)
    ref = pml_scores(x, y)
    assert ours["precision@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)
    sep = evaluate(x[100:], y[100:], query_embeddings=x[:100], query_labels=y[:100], nmi=False)
    ref = pml_scores(x[:100], y[:100], x[100:], y[100:])
    assert sep["precision@1"] == pytest.approx(ref["precision_at_1"], abs=1e-6)
    assert sep["r_precision"] == pytest.approx(ref["r_precision"], abs=1e-6)
    assert sep["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], abs=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_all_metrics_equal_slow_loop(metric):
    x, y = clustered(n_classes=6, per_class=15, dim=5, spread=1.5)
    x = x.double()
    ks = (1, 2, 4, 8, 16, 32)
    ranked_space = x if metric == "euclidean" else x / x.norm(dim=1, keepdim=True)  # cosine = Euclidean on unit
    ref = slow_metrics(ranked_space.numpy(), y.numpy(), ranked_space.numpy(), y.numpy(), True, ks)
    out = evaluate(x, y, recall_at=ks, metric=metric, nmi=False)
    assert {k: out[k] for k in ref} == pytest.approx(ref, abs=1e-12)


def test_separate_query_gallery_equals_slow_loop():
    g = torch.Generator().manual_seed(7)
    q, qy = torch.randn(40, 4, generator=g, dtype=torch.float64), torch.randint(0, 6, (40,), generator=g)
    gal, gy = torch.randn(60, 4, generator=g, dtype=torch.float64), torch.randint(0, 5, (60,), generator=g)
    ref = slow_metrics(q.numpy(), qy.numpy(), gal.numpy(), gy.numpy(), False, (1, 10, 20))
    out = evaluate(gal, gy, recall_at=(1, 10, 20), query_embeddings=q, query_labels=qy, nmi=False)
    assert {k: out[k] for k in ref} == pytest.approx(ref, abs=1e-12)
    assert out["num_lone_queries"] == int((qy == 5).sum())  # class 5 never occurs in the gallery


# --- kNN back-ends and ties ------------------------------------------------------------------
def test_evaluate_backends_agree_including_recall_beyond_the_ranked_list():
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(400, 10, generator=g), torch.randint(0, 60, (400,), generator=g)
    ks = (1, 10, 100, 399)  # largest R is ~15, so Recall@100/399 come from the first-relevant rank
    torch_out = evaluate(x, y, recall_at=ks, nmi=False, chunk=50)
    assert torch_out == pytest.approx(evaluate(x, y, recall_at=ks, nmi=False, backend="faiss"), abs=1e-12)
    ref = slow_metrics(x.double().numpy(), y.numpy(), x.double().numpy(), y.numpy(), True, ks)
    assert {k: torch_out[k] for k in ref} == pytest.approx(ref, abs=1e-12)


def test_first_relevant_rank_breaks_ties_by_index():
    from dmlkit.evaluation.ranking import first_relevant_rank

    d = torch.tensor([[1.0, 0.5, 0.5, 0.5, float("inf")], [2.0, 2.0, 2.0, 2.0, 2.0]])
    members = torch.tensor([[0, 3, 4], [4, 0, 0]])  # row 1 has a single member, padded
    valid = torch.tensor([[True, True, True], [True, False, False]])
    assert first_relevant_rank(d, members, valid).tolist() == [3, 5]
    assert first_relevant_rank(d[:1], torch.tensor([[4]]), torch.tensor([[True]])).tolist() == [6]
    no_tie = torch.tensor([[0.3, 0.1, 0.2, 0.9]])
    assert first_relevant_rank(no_tie, torch.tensor([[0, 3]]), torch.ones(1, 2, dtype=torch.bool)).tolist() == [3]


@pytest.mark.parametrize("grid", [True, False])
def test_long_lists_take_the_relevance_key_path_and_equal_the_slow_loop(grid):
    # two classes of ~80: R-Precision lists of k >= 64 (the numpy key path); on an integer grid
    # nearly every distance is tied across classes, so rows are redone by index
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 4, (160, 2), generator=g).float() if grid else torch.randn(160, 3, generator=g)
    y = torch.randint(0, 2, (160,), generator=g)
    ks = (1, 4, 64, 159)
    ref = slow_metrics(x.double().numpy(), y.numpy(), x.double().numpy(), y.numpy(), True, ks)
    out = evaluate(x, y, recall_at=ks, nmi=False, chunk=50)
    assert {k: out[k] for k in ref} == pytest.approx(ref, abs=1e-12)


def test_faiss_and_torch_agree_on_tie_free_data_and_cosine_matches_normalised_euclidean():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 24, generator=g)
    d_t, i_t = knn_search(x, 20, chunk=64)
    d_f, i_f = knn_search(x, 20, backend="faiss", chunk=64)
    assert torch.equal(i_t, i_f) and torch.allclose(d_t, d_f, atol=1e-4)
    direct = torch.cdist(x[:5].double(), x.double())[torch.arange(5).unsqueeze(1), i_t[:5]]
    assert torch.allclose(d_t[:5].double(), direct, atol=1e-4)
    xn = torch.nn.functional.normalize(x, dim=1)
    assert torch.equal(knn_search(x, 20, metric="cosine")[1], knn_search(xn, 20)[1])
    _, i_c = knn_search(x, 20, metric="cosine", backend="faiss")
    assert torch.equal(i_c, knn_search(x, 20, metric="cosine")[1])


def test_exclude_self_false_starts_with_self_and_separate_gallery():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 3, generator=g)
    _, idx = knn_search(x, 4, exclude_self=False)
    assert torch.equal(idx[:, 0], torch.arange(50))
    _, idx2 = knn_search(x, 3)
    assert torch.equal(idx[:, 1:], idx2)
    _, idx3 = knn_search(x[:10], 50, gallery=x)  # a separate gallery: nothing removed
    assert torch.equal(idx3[:, 0], torch.arange(10))


def test_ties_straddling_the_cut_are_broken_by_index():
    x = torch.tensor([[0.0], [1.0], [-1.0], [1.0], [-1.0], [1.0], [2.0], [-1.0]], dtype=torch.float64)
    # from 0: six items at distance 1 (indices 1..5, 7) then 6 at 2; k=3 must keep 1, 2, 3
    for chunk in (1, 3, 8):
        d, idx = knn_search(x, 3, chunk=chunk)
        assert idx[0].tolist() == [1, 2, 3]
        assert d[0].tolist() == [1.0, 1.0, 1.0]
    full = torch.sort(torch.cdist(x, x).fill_diagonal_(float("inf")), dim=1, stable=True).indices[:, :6]
    assert torch.equal(knn_search(x, 6)[1], full)


# --- §8.6 lone queries, options, errors ------------------------------------------------------
def test_lone_queries_excluded_and_counted_or_zero():
    x = torch.cat([EX2_X, torch.tensor([[9.0]], dtype=torch.float64)])
    y = torch.cat([EX2_Y, torch.tensor([2])])
    excl = evaluate(x, y, recall_at=(1, 2, 4), nmi=False)
    assert excl["num_lone_queries"] == 1
    base = evaluate(EX2_X, EX2_Y, recall_at=(1, 2, 4), nmi=False)
    assert {k: excl[k] for k in ("recall@4", "map@r")} == pytest.approx({k: base[k] for k in ("recall@4", "map@r")})
    zero = evaluate(x, y, recall_at=(1, 2, 4), nmi=False, lone_query="zero")
    assert zero["num_lone_queries"] == 1
    assert zero["recall@4"] == pytest.approx(6 / 7)
    assert zero["map@r"] == pytest.approx(excl["map@r"] * 6 / 7)


def test_class_average_option():
    out = evaluate(EX2_X, EX2_Y, recall_at=(1,), nmi=False, average="class")
    # per-query MAP@R 0.5, 0.25, 0.25 | 0.25, 0, 0 over classes a = {0,1,4}, b = {2,3,5}
    assert out["map@r"] == pytest.approx(((0.5 + 0.25 + 0.0) / 3 + (0.25 + 0.25 + 0.0) / 3) / 2)


def test_all_lone_gives_nan_with_warning():
    with pytest.warns(UserWarning, match="lone"):
        out = evaluate(torch.randn(4, 2), [0, 1, 2, 3], recall_at=(1,), nmi=False)
    assert math.isnan(out["recall@1"]) and out["num_lone_queries"] == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embeddings=torch.tensor([[0.0], [float("nan")], [1.0]]), labels=[0, 0, 1]), "NaN or inf"),
        (dict(embeddings=torch.tensor([[0.0], [float("inf")], [1.0]]), labels=[0, 0, 1]), "NaN or inf"),
        (dict(embeddings=torch.zeros(3, 2), labels=[0, 1]), "one label per embedding"),
        (dict(embeddings=torch.zeros(3, 2), labels=[0, 1, 1], recall_at=(1, 3)), "K=3"),
        (dict(embeddings=torch.zeros(3, 2), labels=[0, 1, 1], metric="manhattan"), "metric"),
        (dict(embeddings=torch.zeros(3, 2), labels=[0, 1, 1], lone_query="drop"), "lone_query"),
        (dict(embeddings=torch.zeros(3), labels=[0, 1, 1]), "2-D"),
        (dict(embeddings=torch.zeros(3, 2), labels=[0.0, 1.0, 1.0]), "integer"),
        (dict(embeddings=torch.zeros(1, 2), labels=[0]), "at least 2 items"),
        (dict(embeddings=torch.zeros(3, 2), labels=[0, 1, 1], backend="annoy"), "backend"),
        (dict(embeddings=torch.zeros(3, 2), labels=[0, 1, 1], query_labels=[0]), "without query_embeddings"),
    ],
)
def test_bad_input_raises_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate(recall_at=kwargs.pop("recall_at", (1,)), **kwargs)


def test_knn_search_rejects_bad_k_and_dimension_mismatch():
    with pytest.raises(ValueError, match="k=5"):
        knn_search(torch.zeros(5, 2), 5)
    with pytest.raises(ValueError, match="dimension"):
        knn_search(torch.zeros(5, 2), 1, gallery=torch.zeros(5, 3))


def test_neighbour_table_starts_with_self_even_with_lower_index_duplicate():
    from dmlkit.evaluation import neighbour_table

    x = torch.tensor([[1.0], [1.0], [3.0], [0.0]])
    table = neighbour_table(x, 3)
    assert table[:, 0].tolist() == [0, 1, 2, 3]
    assert table[1].tolist() == [1, 0, 3]  # the duplicate 0 comes right after, not before, item 1
    assert neighbour_table(x, 1).tolist() == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="k=5"):
        neighbour_table(x, 5)
