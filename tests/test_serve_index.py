"""The serve page's retrieval index and the pictures' captions: hand-computed cases and the evaluator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.evaluation import evaluate
from dmlkit.serve.index import RetrievalIndex
from dmlkit.viz import grids, write_report
from dmlkit.viz.names import class_name, similarity_scores

NAMES = ["T-shirt/top", "Trouser"]


def line_index(**kwargs) -> RetrievalIndex:
    # points on a line: 0, 1 (class 0) and 3, 10 (class 1); every R = 1
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    return RetrievalIndex(x, [0, 0, 1, 1], class_names=NAMES, backend="torch", **kwargs)


def test_per_query_recall_and_ap_by_hand():
    index = line_index()
    # item 2 (x=3): nearest is item 1 (d=2, class 0) -> R@1 0; its one relevant item (10) is at rank 3,
    # beyond R = 1 -> AP = MAP@R term = 0. The others find their partner first.
    assert index.recall1.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert index.ap.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert index.means() == {"recall@1": 0.75, "map@r": 0.75}
    answer = index.query_item(2, k=3)
    assert answer["query"]["class_name"] == "Trouser"
    assert [n["index"] for n in answer["neighbours"]] == [1, 0, 3]
    assert [n["distance"] for n in answer["neighbours"]] == [2.0, 3.0, 7.0]
    assert [n["same"] for n in answer["neighbours"]] == [False, False, True]
    assert answer["score_name"] == "euclidean distance"  # not unit vectors: the distance is what ranks
    with pytest.raises(IndexError, match="out of range"):
        index.query_item(4, k=2)


def test_items_filter_by_class_order_worst_first_and_pages():
    index = line_index()
    assert [i["index"] for i in index.items(order="worst")["items"]] == [2, 0, 1, 3]
    trousers = index.items(label=1)
    assert trousers["total"] == 2 and {i["class_name"] for i in trousers["items"]} == {"Trouser"}
    page = index.items(page=1, per_page=3)
    assert page["pages"] == 2 and [i["index"] for i in page["items"]] == [3]
    with pytest.raises(ValueError, match="order"):
        index.items(order="best")
    assert index.classes() == [{"label": 0, "class_name": "T-shirt/top", "count": 2},
                               {"label": 1, "class_name": "Trouser", "count": 2}]


def test_means_equal_the_evaluator_and_lone_queries_are_left_out():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(7)[:40]  # class 5 has 5 items
    labels = torch.cat([labels, torch.tensor([9])])  # one lone query
    x = torch.randn(6, 16, generator=g)[labels.clamp_max(5)] + 0.8 * torch.randn(len(labels), 16, generator=g)
    for backend in ("torch", "faiss"):
        index = RetrievalIndex(x, labels.numpy(), backend=backend)
        reference = evaluate(x, labels, recall_at=(1,), nmi=False)
        assert index.means()["recall@1"] == pytest.approx(reference["recall@1"], abs=1e-12)
        assert index.means()["map@r"] == pytest.approx(reference["map@r"], abs=1e-12)
        assert index.item(40)["ap"] is None and index.items(order="worst")["items"][-1]["index"] == 40


def test_separate_gallery_and_unit_vectors_show_cosine_similarity():
    gallery = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    index = RetrievalIndex(query, [0, 1], gallery, [0, 0, 0], backend="torch")
    assert index.recall1[0] == 1.0 and np.isnan(index.recall1[1])  # class 1 is not in the gallery: lone
    hits = index.search(torch.tensor([0.0, 1.0]), k=3)
    assert [h["index"] for h in hits] == [2, 1, 0]
    assert [round(h["score"], 6) for h in hits] == [1.0, 0.8, 0.0]  # cos = 1 - d^2 / 2 on unit vectors
    assert index.score_name == "cosine similarity"
    scores, name = similarity_scores(torch.tensor([0.25]), "cosine", unit_norm=False)
    assert name == "cosine similarity" and float(scores[0]) == 0.75


def test_class_name_falls_back_to_the_id():
    assert class_name(1, NAMES) == "Trouser"
    assert class_name(7, NAMES) == "7" and class_name(-1, NAMES) == "-1" and class_name(3) == "3"


def test_retrieval_grid_captions_name_the_class_and_the_similarity(tmp_path, monkeypatch):
    captions = []
    real_tile = grids._tile
    monkeypatch.setattr(grids, "_tile", lambda ax, image, colour, caption="": (captions.append(caption),
                                                                             real_tile(ax, image, colour, caption)))
    images = torch.rand(6, 1, 8, 8)
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0], [11.0], [12.5]])
    grids.retrieval_grid(images, x, [0, 0, 0, 1, 1, 1], tmp_path / "g.png", n_queries=6, top_k=1,
                         class_names=NAMES)
    assert captions[:2] == ["query: T-shirt/top", "#1 T-shirt/top\n1.000"]
    assert captions[-2:] == ["query: Trouser", "#1 Trouser\n1.500"]
    captions.clear()
    grids.similarity_grid(images, torch.eye(6), tmp_path / "s.png", top=1, n_anchors=1, labels=[1] * 6,
                          class_names=NAMES)
    assert captions[0] == "anchor: Trouser" and captions[1] == "Trouser\n0.00"


def test_report_links_open_from_the_run_directory_whatever_the_working_directory(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "a"
    (run / "pictures").mkdir(parents=True)
    (run / "pictures" / "map.png").write_bytes(b"png")
    monkeypatch.chdir(tmp_path)  # the engine passes "pictures/map.png", relative to the run
    text = write_report(run, {"recall@1": 0.5}, pictures=["pictures/map.png"]).read_text()
    assert "![map](pictures/map.png)" in text


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_gallery_index_returns_what_knn_search_returns(backend, metric):
    from dmlkit.evaluation.knn import GalleryIndex, knn_search

    g = torch.Generator().manual_seed(3)
    gallery = torch.randint(-2, 3, (300, 4), generator=g).float()  # small integer grid: many exact ties
    query = torch.cat([gallery[:5], torch.randn(7, 4, generator=g)])
    index = GalleryIndex(gallery, metric, backend)
    d, i = index.search(query, 9)
    d_ref, i_ref = knn_search(query, 9, gallery=gallery, metric=metric, backend=backend)
    assert torch.equal(i, i_ref) and torch.allclose(d, d_ref, atol=1e-5)
    with pytest.raises(ValueError, match="dimension"):
        index.search(torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="k=301"):
        index.search(query, 301)


def test_serve_cli_bad_run_directory_exits_2_with_one_line(tmp_path, capsys):
    from dmlkit.cli import main

    assert main(["serve", str(tmp_path / "nowhere"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run directory" in err[0] and "dmlkit train --out" in err[0]


def test_a_busy_port_is_a_one_line_error(monkeypatch):
    import socket

    from dmlkit.serve.server import make_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ValueError, match="pick another --port"):
            make_server(object(), "127.0.0.1", taken.getsockname()[1])


def test_json_answers_carry_no_nan():
    from dmlkit.serve.server import finite, host_name

    assert finite({"a": [float("nan"), 1.5, {"b": float("inf")}], "c": "x"}) == {"a": [None, 1.5, {"b": None}], "c": "x"}
    assert host_name("127.0.0.1:8765") == "127.0.0.1" and host_name("[::1]:80") == "[::1]"
    assert host_name("localhost") == "localhost"
