"""The Method interface's engine hooks and the one-of-each helpers: artifacts the engine writes, phases it
logs, pseudo-supervision estimators, deprecated option names, the label map, the seeded generator, the
L-step and softmax pre-training as functions, faiss as an optional extra."""
from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

from dmlkit.data.labels import label_map
from dmlkit.data.seeding import seeded_generator
from dmlkit.engine.artifacts import artifact_path, write_artifacts
from dmlkit.methods import Method, method_class
from dmlkit.methods.base import Artifact


def test_label_map_by_hand():
    assert label_map([7, -1, 3, 7]).tolist() == [-1, -1, -1, 0, -1, -1, -1, 1]
    assert label_map(np.array([2, 0, 2])).tolist() == [0, -1, 1]
    assert label_map([-1, -1]).numel() == 0


def test_seeded_generator_is_the_seed_sequence_recipe():
    expected = int(np.random.SeedSequence([5, 1, 2]).generate_state(1)[0])
    assert seeded_generator(5, 1, 2).initial_seed() == expected
    assert seeded_generator((5, 1), 2).initial_seed() == expected  # a sequence seed is the same stream
    assert seeded_generator(5, 2, 1).initial_seed() != expected


def test_write_artifacts_writes_tensors_and_refuses_paths_outside(tmp_path):
    written = write_artifacts([Artifact("stage-x.pt", {"w": torch.arange(3), "round": 1})], tmp_path)
    assert written == [tmp_path / "stage-x.pt"]
    saved = torch.load(tmp_path / "stage-x.pt", weights_only=True)
    assert saved["round"] == 1 and saved["w"].tolist() == [0, 1, 2]
    for bad in ("../x.pt", "/tmp/x.pt", ""):
        with pytest.raises(ValueError, match="inside the run directory"):
            artifact_path(tmp_path, bad)
    with pytest.raises(ValueError, match="neither tensors nor points"):
        write_artifacts([Artifact("empty.pt")], tmp_path)


def test_a_failed_picture_is_a_warning(tmp_path, caplog, monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("perplexity must be less than n_samples")

    monkeypatch.setattr("dmlkit.viz.pool_map", fail)
    bad = Artifact("pictures/map.png", points=(np.zeros((1, 4)), np.array([0])), title="one point")
    with caplog.at_level(logging.WARNING, logger="dmlkit"):
        assert write_artifacts([bad], tmp_path) == []
    assert "map.png" in caplog.text and "perplexity" in caplog.text


class _Phased(Method):
    """Two phases; asks for one file when it enters the second."""

    name = "phased"

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.second = False

    def phase(self) -> str:
        return "second" if self.second else "first"

    def refresh(self, context) -> None:
        if context.epoch == 1 and not self.second:
            self.second = True
            if context.keeps_artifacts:
                self.keep_artifact(Artifact("stage-first.pt", {"weight": self.weight.detach().clone()}))


def test_the_engine_logs_a_phase_change_and_writes_what_the_method_kept(tmp_path, caplog):
    from dmlkit.engine.module import MethodModule
    from dmlkit.methods.base import RefreshContext

    method = _Phased()
    module = MethodModule(method, None, None, None, None, {"run_dir": str(tmp_path)}, (1,))
    context = RefreshContext(epoch=1, train=None, embed=None, knn=None, device=torch.device("cpu"), keeps_artifacts=True)
    with caplog.at_level(logging.INFO, logger="dmlkit"):
        before = method.phase()
        method.refresh(context)
        module._after_refresh(before)
    assert "second phase begins (after first)" in caplog.text
    assert torch.equal(torch.load(tmp_path / "stage-first.pt", weights_only=True)["weight"], torch.ones(2))
    assert method.take_artifacts() == []  # taken once


def test_quality_rows_come_from_the_methods_estimators():
    from dmlkit.engine.quality import pseudo_supervision_estimators
    from dmlkit.targets.contextual import contextual_similarity
    from dmlkit.targets.manifold import manifold_estimate

    estimators = pseudo_supervision_estimators(k=6)
    assert list(estimators) == ["stml-similarity", "plm-pieces", "ssdml-triplets"]  # registry order, no name branches
    assert method_class("ssdml").pseudo_supervision_estimators()["ssdml-triplets"].config.k == 10
    assert method_class("supervised").pseudo_supervision_estimators() == {}
    x = torch.nn.functional.normalize(torch.randn(20, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    torch.testing.assert_close(estimators["stml-similarity"](x), contextual_similarity(x, torch.arange(20), 6, 3.0))
    plm, reference = estimators["plm-pieces"](x), manifold_estimate(x, k=6)
    assert torch.equal(plm["groups"], reference["groups"])
    torch.testing.assert_close(plm["similarity"], reference["similarity"])


@pytest.mark.parametrize("method, old, new", [("plm", "proxy_lr_mult", "proxy_lr_multiplier"),
                                              ("slade", "m_per_class", "samples_per_class"),
                                              ("slade", "cluster_init", "kmeans_init"),
                                              ("stml", "num_neighbors", "group_size"),
                                              ("stml", "ema_m", "momentum"),
                                              ("drml", "num_branches", "n_branches")])
def test_deprecated_option_names_warn_and_map_to_the_new_ones(method, old, new):
    cls = method_class(method)
    with pytest.warns(FutureWarning, match=f"'{old}' is deprecated, use '{new}'"):
        assert cls.current_option_names({old: 3, "backbone": "x"}) == {new: 3, "backbone": "x"}
    with pytest.raises(ValueError, match=f"give option {new} only"):
        cls.current_option_names({old: 3, new: 3})


def test_metric_step_lowers_eq3_and_keeps_L_orthonormal():
    from dmlkit.losses.angular_triplet import angular_triplet_loss, metric_step
    from dmlkit.models.orthogonal import qr_retraction

    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.nn.functional.normalize(torch.randn(30, 6, generator=g, dtype=torch.float64), dim=1)
               for _ in range(3))
    L0 = qr_retraction(torch.randn(6, 3, generator=g, dtype=torch.float64))
    L1 = metric_step(a.requires_grad_(), p, n, L0, 40.0, "sum", max_iter=10)
    with torch.no_grad():
        assert float(angular_triplet_loss(a, p, n, L1)) < float(angular_triplet_loss(a, p, n, L0))
    torch.testing.assert_close(L1.T @ L1, torch.eye(3, dtype=torch.float64))
    assert a.grad is None  # θ fixed: no gradient reaches the features


def test_softmax_pretraining_learns_separable_labels():
    from dmlkit.losses.pretraining import softmax_pretraining

    torch.manual_seed(0)
    labels = np.array([0, 1] * 20 + [-1] * 10)
    images = torch.randn(len(labels), 4) + 4.0 * torch.as_tensor(np.where(labels == 1, 1.0, -1.0), dtype=torch.float32)[:, None]
    net = torch.nn.Linear(4, 3)
    loss = softmax_pretraining(net, net.parameters(), 3, lambda idx: images[idx], labels, epochs=30, lr=0.05,
                               batch_size=10, seed=0)
    assert loss < 0.1  # far below ln 2 ≈ 0.69, the cross-entropy of an uninformed two-class classifier
    with pytest.raises(ValueError, match="needs labeled items"):
        softmax_pretraining(net, net.parameters(), 3, lambda idx: images[idx], -np.ones(4), epochs=1, lr=0.1,
                            batch_size=2, seed=0)


def test_faiss_is_optional_with_a_clear_message(monkeypatch):
    from dmlkit.evaluation.knn import knn_search
    from dmlkit.targets.clusters import kmeans_pseudo_labels

    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    x = torch.randn(10, 3)
    for call in (lambda: kmeans_pseudo_labels(x, 2, backend="faiss"), lambda: knn_search(x, 2, backend="faiss")):
        with pytest.raises(ImportError, match=r"pip install 'dmlkit\[faiss\]'"):
            call()
    assert kmeans_pseudo_labels(x, 2)[0].shape == (10,)  # the default path needs no faiss
    auto = kmeans_pseudo_labels(x, 3, seed=1, backend="auto")[0]  # DeepCluster's default: torch without faiss
    assert torch.equal(auto, kmeans_pseudo_labels(x, 3, seed=1, backend="torch")[0])


def test_stage_names_are_engine_visible():
    from dmlkit.methods import BuildInfo

    info = BuildInfo(channels=1, image_size=28, num_train=10, num_classes=2)
    assert method_class("ssdml").from_options({"pretrain_epochs": 1}, info).phase() == "pretraining"
    assert method_class("ssdml").from_options({}, info).phase() == "partition-0"
    assert method_class("stml").phase is Method.phase  # one phase: the default "train"


def test_a_deprecated_option_name_reaches_the_method_through_the_run_config():
    from dmlkit.engine.config import resolve_config
    from dmlkit.engine.validate import method_options

    with pytest.warns(FutureWarning, match="'m_per_class' is deprecated"):
        config = resolve_config({"method": "slade", "options": {"m_per_class": 8}})
    assert config.options == {"samples_per_class": 8}  # config.yaml records the current name
    with pytest.warns(FutureWarning):  # an old run's config.yaml, validated again on resume
        assert method_options("plm", {"proxy_lr_mult": 10.0})["proxy_lr_multiplier"] == 10.0


def test_one_name_per_choice_across_method_options():
    """NN-group size, EMA momentum and counts read alike in every method's options (issue 24, item 5)."""
    import dataclasses

    fields = {name: {f.name for f in dataclasses.fields(method_class(name).Config)}
              for name in ("stml", "plm", "instance", "deep-lrml", "drml", "slade", "deepcluster")}
    assert {"group_size"} <= fields["stml"] & fields["plm"] & fields["deep-lrml"]
    assert {"momentum"} <= fields["stml"] & fields["plm"] & fields["instance"]
    assert "n_branches" in fields["drml"] and "n_clusters" in fields["slade"] & fields["deepcluster"]
    stale = {"num_neighbors", "ema_m", "num_branches", "freeze_bn", "m_per_class", "proxy_lr_mult", "cluster_init"}
    assert not stale & set().union(*fields.values())
