"""The SLADE method: stage schedule, pseudo labels, rounds, gradient flow, resume (spec SLADE.md §3, §8, §11.8-9)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.data.base import DMLDataset
from dmlkit.engine.artifacts import write_artifacts
from dmlkit.losses.basis import RankingLoss
from dmlkit.methods.base import BuildInfo, RefreshContext
from dmlkit.methods.slade import SLADE, Config
from dmlkit.targets.clusters import class_prototypes, kmeans_pseudo_labels

N_LABELED, N_UNLABELED = 32, 32


def _dataset() -> DMLDataset:
    """Two labeled classes (bright top / bright bottom half) and an unlabeled pool of both and of a third."""
    rng = np.random.default_rng(0)
    n = N_LABELED + N_UNLABELED
    kind = np.concatenate([np.repeat([0, 1], N_LABELED // 2), np.arange(N_UNLABELED) % 3])
    images = rng.integers(0, 60, size=(n, 1, 28, 28)).astype(np.uint8)
    images[kind == 0, :, :14] += 180
    images[kind == 1, :, 14:] += 180
    images[kind == 2, :, :, :14] += 180
    labels = np.where(np.arange(n) < N_LABELED, kind, -1)
    return DMLDataset(images, labels, kind, name="stand-in")


class _TinyNet(torch.nn.Module):
    """A stand-in backbone (the SSDML net is slow on a shared CPU): flatten -> linear, 32-d."""

    out_dim = 32

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(28 * 28, self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x.flatten(1)))


@pytest.fixture(autouse=True)
def _tiny_backbone(monkeypatch):
    from dmlkit.models import EmbeddingHead

    def build(backbone, dim, info, pretrained=None, normalize=True, **backbone_options):
        return _TinyNet(), EmbeddingHead(_TinyNet.out_dim, dim, normalize=normalize)

    monkeypatch.setattr("dmlkit.methods.reference.build_embedder", build)


def _method(**options) -> SLADE:
    torch.manual_seed(0)
    config = Config(
        **{
            "backbone": "mnist-net",
            "embedding_dim": 16,
            "batch_labeled": 8,
            "batch_unlabeled": 8,
            "basis_warmup_iters": 1,
            "pictures": False,
            **options,
        }
    )
    return SLADE(
        config, BuildInfo(channels=1, image_size=28, num_train=N_LABELED + N_UNLABELED, num_classes=2)
    )


def _context(
    method: SLADE, data: DMLDataset, epoch: int, epochs: int, run_dir: Path | None = None
) -> RefreshContext:
    def embed(fn, dataset=None):
        ds = dataset or data
        was_training = method.training
        method.eval()
        with torch.no_grad():
            out = fn(torch.stack([ds.image(i) for i in range(len(ds))]))
        method.train(was_training)
        return out.cpu()

    return RefreshContext(
        epoch=epoch,
        train=data,
        embed=embed,
        knn=None,
        device=torch.device("cpu"),
        seed=0,
        extra={"epochs": epochs, "test_run_dir": run_dir},
        keeps_artifacts=run_dir is not None,
    )


def _refresh(method: SLADE, context: RefreshContext) -> None:
    """refresh, then what the engine does after it: write the artifacts the method asked for."""
    method.refresh(context)
    artifacts = method.take_artifacts()
    assert bool(artifacts) <= context.keeps_artifacts  # nothing is asked for without a run directory
    if context.keeps_artifacts:
        write_artifacts(artifacts, context.extra["test_run_dir"])


def _batch(data: DMLDataset, idx: list[int]) -> dict:
    items = [data[i] for i in idx]
    return {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.tensor([it["label"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }


def _epoch(
    method: SLADE, data: DMLDataset, epoch: int, epochs: int, optimizer, run_dir=None
) -> list[list[int]]:
    _refresh(method, _context(method, data, epoch, epochs, run_dir))
    method.train()
    batches = [list(b) for b in method.batch_sampler(data, 16, seed=0, epoch=epoch)]
    for idx in batches:
        losses = method.training_loss(_batch(data, idx))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        method.after_step()
    return batches


def _net_state(method: SLADE) -> dict:
    return copy.deepcopy({"backbone": method.backbone.state_dict(), "head": method.head.state_dict()})


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[part][k], b[part][k]) for part in ("backbone", "head") for k in a[part])


def _expected_pseudo(method: SLADE, data: DMLDataset, state: dict, seed: int) -> torch.Tensor:
    """Pseudo labels written from the definition: k-means seeded with the teacher's class prototypes."""
    teacher = copy.deepcopy(method)
    teacher.backbone.load_state_dict(state["backbone"])
    teacher.head.load_state_dict(state["head"])
    features = _context(teacher, data, 0, 1).embed(teacher.embed)
    labels = torch.as_tensor(data.labels)
    protos = class_prototypes(features[labels >= 0], labels[labels >= 0], 2)
    return kmeans_pseudo_labels(features[labels < 0], 2, protos, seed=seed, iters=25)[0]


def test_stage_schedule_teacher_pseudo_labels_student_rounds(tmp_path):
    data, method = _dataset(), _method(rounds=2)
    optimizer = torch.optim.SGD(method.parameter_groups(0.05, 0.0), lr=0.05)
    initial = _net_state(method)
    assert method.round_starts(3) == [1, 2]

    batches = _epoch(method, data, 0, 3, optimizer, tmp_path)  # stage 1: teacher on labels only
    assert method.stage_round == 0 and all(data.labels[i] >= 0 for b in batches for i in b)
    teacher = _net_state(method)

    batches = _epoch(method, data, 1, 3, optimizer, tmp_path)  # stage 2 + round-1 student
    assert method.stage_round == 1
    saved = torch.load(tmp_path / "stage-teacher.pt", weights_only=True)
    assert _same(saved, teacher) and saved["stage"] == "teacher"
    pseudo = torch.load(tmp_path / "stage-pseudo-labels-round-1.pt", weights_only=True)["pseudo_labels"]
    assert (pseudo[:N_LABELED] == -1).all()
    assert torch.equal(pseudo[N_LABELED:], _expected_pseudo(method, data, teacher, seed=1))
    assert all(
        sum(data.labels[i] >= 0 for i in b) == 8 and sum(data.labels[i] < 0 for i in b) == 8 for b in batches
    )
    unlabeled_part = [[int(pseudo[i]) for i in b if data.labels[i] < 0] for b in batches]
    assert all(len(set(part)) <= 2 for part in unlabeled_part)  # grouped by pseudo class (K = C = 2)
    student = _net_state(method)
    assert not _same(student, initial)

    _epoch(method, data, 2, 3, optimizer, tmp_path)  # round 2: the round-1 student is the teacher
    assert method.stage_round == 2
    saved = torch.load(tmp_path / "stage-student-round-1.pt", weights_only=True)
    assert _same(saved, student)
    pseudo2 = torch.load(tmp_path / "stage-pseudo-labels-round-2.pt", weights_only=True)["pseudo_labels"]
    assert torch.equal(pseudo2[N_LABELED:], _expected_pseudo(method, data, student, seed=2))


def test_student_initialisation_options():
    data = _dataset()
    for init in ("ssl", "teacher"):
        method = _method(student_init=init)
        initial = _net_state(method)
        optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
        _epoch(method, data, 0, 2, optimizer)
        teacher = _net_state(method)
        method.refresh(_context(method, data, 1, 2))
        assert _same(_net_state(method), initial if init == "ssl" else teacher)


def test_round_starts():
    method = _method()
    assert method.round_starts(80) == [40]
    assert _method(rounds=2).round_starts(9) == [3, 6]
    assert _method(rounds=2).round_starts(8) == [2, 5]  # the last round takes the remainder
    assert _method(rounds=2, teacher_epochs=2, student_epochs=3).round_starts(8) == [2, 5]
    assert _method(teacher_epochs=5).round_starts(7) == [5]
    with pytest.raises(ValueError, match="teacher_epochs"):
        _method(rounds=2, teacher_epochs=2, student_epochs=3).round_starts(9)
    with pytest.raises(ValueError, match="epochs"):
        _method(rounds=2).round_starts(2)
    assert [method.round_for_epoch(e, 4) for e in range(4)] == [0, 0, 1, 1]


def _student(method: SLADE, data: DMLDataset) -> dict:
    method.refresh(_context(method, data, 1, 2))
    idx = next(iter(method.batch_sampler(data, 16, seed=0, epoch=1)))
    return _batch(data, list(idx))


def test_gradient_flow():
    data = _dataset()
    method = _method(basis_warmup_iters=1)
    batch = _student(method, data)
    losses = method.training_loss(batch)  # warm-up step: only W_a trains
    losses["loss"].backward()
    assert all(p.grad is None for p in method.backbone.parameters())
    assert all(p.grad is None for p in method.head.parameters())
    assert method.basis.weight.grad.abs().sum() > 0
    method.zero_grad(set_to_none=True)
    method.after_step()

    losses = method.training_loss(batch)  # end to end: the ranking terms never reach the basis
    (losses["rank_labeled"] + losses["rank_unlabeled"]).backward(retain_graph=True)
    assert method.basis.weight.grad is None or (method.basis.weight.grad == 0).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())
    method.zero_grad(set_to_none=True)
    (losses["ce"] + losses["sd"]).backward()
    assert method.basis.weight.grad.abs().sum() > 0


def test_unlabeled_term_is_zero_without_selected_pairs():
    for kind in ("ms", "contrastive"):
        rank = RankingLoss(kind)
        x = torch.randn(4, 8, requires_grad=True)
        empty = torch.zeros(4, 4, dtype=torch.bool)
        loss = rank.pairs(x, empty, empty)
        loss.backward()
        assert loss.item() == 0.0 and (x.grad == 0).all()


def test_contrastive_pairs_match_the_formula():
    """§4: mean over P of [d − m_pos]_+ plus mean over N of [m_neg − d]_+, d between normalised embeddings."""
    torch.manual_seed(3)
    x = torch.randn(5, 6)
    pos = torch.zeros(5, 5, dtype=torch.bool)
    neg = torch.zeros(5, 5, dtype=torch.bool)
    pos[0, 1] = pos[2, 3] = True
    neg[0, 4] = neg[1, 2] = neg[3, 4] = True
    z = torch.nn.functional.normalize(x, dim=1)
    d = torch.cdist(z, z)
    expected = d[pos].clamp_min(0).mean() + (0.7 - d[neg]).clamp_min(0).mean()
    loss = RankingLoss("contrastive", m_neg=0.7).pairs(x, pos, neg)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_resume_continues_at_the_stored_stage():
    data = _dataset()
    method = _method()
    _student(method, data)
    state, extra = method.state_dict(), method.extra_state_for_checkpoint()
    assert extra["stage_round"] == 1

    resumed = _method()
    resumed.load_state_dict(state)
    resumed.load_extra_state_from_checkpoint(extra)
    context = _context(resumed, data, 1, 2)
    context.embed = lambda *a, **k: pytest.fail("a resumed round must not recluster")
    resumed.refresh(context)
    assert resumed.stage_round == 1 and torch.equal(resumed.pseudo_labels, method.pseudo_labels)


def test_pictures_in_the_run_directory(tmp_path):
    data, method = _dataset(), _method(pictures=True)
    _refresh(method, _context(method, data, 0, 2, tmp_path))
    assert method.phase() == "teacher"
    _refresh(method, _context(method, data, 1, 2, tmp_path))
    assert method.phase() == "student-round-1"
    assert (tmp_path / "pictures" / "slade-initial.png").is_file()
    assert (tmp_path / "pictures" / "slade-teacher.png").is_file()


def test_bad_settings_raise():
    data, method = _dataset(), _method()
    with pytest.raises(ValueError, match="batch_labeled"):
        method.batch_sampler(data, 32, seed=0, epoch=0)
    with pytest.raises(ValueError, match="rank_loss"):
        _method(rank_loss="triplet")
    with pytest.raises(ValueError, match="labeled classes"):
        SLADE(Config(), BuildInfo(num_train=10, num_classes=0))
    unlabeled_free = DMLDataset(data.images, np.abs(data.true_labels), data.true_labels)
    with pytest.raises(ValueError, match="unlabeled pool"):
        method.refresh(_context(method, unlabeled_free, 0, 2))


@pytest.mark.parametrize("with_labeled", [False, True])
def test_sd_statistics_come_from_unlabeled_pairs_unless_asked(with_labeled):
    from dmlkit.losses.basis import pair_statistics_inputs

    data = _dataset()
    method = _method(sd_labeled_pairs=with_labeled)
    batch = _student(method, data)
    method.views = torch.nn.Identity()  # deterministic embeddings for the reference below
    method.training_loss(batch)
    with torch.no_grad():
        f = method.head(method.backbone(batch["image"]))
        lab = batch["label"] >= 0
        pseudo = method.pseudo_labels[batch["index"][~lab]]
        s_pos = pair_statistics_inputs(method.basis.similarity(f[~lab]), pseudo)[0]
        if with_labeled:
            s_pos = torch.cat(
                [s_pos, pair_statistics_inputs(method.basis.similarity(f[lab]), batch["label"][lab])[0]]
            )
    assert method.gaussians.mu_pos.item() == pytest.approx(
        s_pos.mean().item(), abs=1e-6
    )  # seeded from batch 1


def test_teacher_weights_skip_the_teacher_stage(tmp_path):
    data = _dataset()
    first = _method()
    optimizer = torch.optim.SGD(first.parameters(), lr=0.1)
    _epoch(first, data, 0, 2, optimizer, tmp_path / "first")
    _refresh(first, _context(first, data, 1, 2, tmp_path / "first"))
    reused = _method(teacher_weights=str(tmp_path / "first" / "stage-teacher.pt"))
    assert reused.round_starts(1) == [0]
    reused.refresh(_context(reused, data, 0, 1, tmp_path / "reused"))
    assert reused.stage_round == 1 and torch.equal(reused.pseudo_labels, first.pseudo_labels)
    assert _same(
        _net_state(reused), _net_state(_method())
    )  # the "ssl" student starts from the initial weights
    with pytest.raises(ValueError, match="stage"):
        torch.save({"weights": 1}, tmp_path / "bad.pt")
        _method(teacher_weights=str(tmp_path / "bad.pt"))


@pytest.mark.parametrize("selection", ["confident", "positives", "all"])
def test_pair_selection_modes_reach_the_unlabeled_term(selection):
    """``positives`` keeps every cross-cluster pair of the unlabeled half as a negative and filters only
    the positives; ``confident`` filters both; ``all`` filters neither."""
    data = _dataset()
    method = _method(basis_warmup_iters=0, pair_selection=selection)
    batch = _student(method, data)
    pseudo = method.pseudo_labels[batch["index"][batch["label"] < 0]]
    same = pseudo[:, None] == pseudo[None, :]
    upper = torch.ones_like(same).triu(1)
    losses = method.training_loss(batch)
    cross, within = int((upper & ~same).sum()), int((upper & same).sum())
    assert cross > 0 and within > 0
    if selection == "confident":
        assert losses["negative_pairs"].item() < cross and losses["positive_pairs"].item() <= within
    elif selection == "positives":
        assert losses["negative_pairs"].item() == cross and losses["positive_pairs"].item() <= within
    else:
        assert losses["negative_pairs"].item() == cross and losses["positive_pairs"].item() == within
