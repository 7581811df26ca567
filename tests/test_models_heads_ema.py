"""Embedding heads and the EMA update (specs/STML.md §2, §6 and §10.7)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dmlkit.models import EmbeddingHead, ema_update, l2_normalize


class TinyBackbone(nn.Module):
    """Conv + BN + GAP: has parameters, float BN buffers and an integer num_batches_tracked."""

    out_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).mean(dim=(2, 3))


class Heads(nn.Module):
    """A backbone shared by named heads (STML's student has g and f, its teacher g only)."""

    def __init__(self, heads: dict[str, int]) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.heads = nn.ModuleDict({name: EmbeddingHead(TinyBackbone.out_dim, dim) for name, dim in heads.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        return {name: head(features) for name, head in self.heads.items()}


def _student_teacher() -> tuple[Heads, Heads]:
    student = Heads({"g": 8, "f": 4})
    teacher = Heads({"g": 8})
    return student, teacher


def _train_student_a_bit(student: nn.Module) -> None:
    student.train()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    for _ in range(2):
        out = student(torch.randn(4, 1, 6, 6))
        (out["g"].pow(2).sum() + out["f"].pow(2).sum()).backward()
        optimizer.step()
        optimizer.zero_grad()


# --- heads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_dim,out_dim", [(16, 4), (4, 16)])
def test_head_orthogonal_init(in_dim: int, out_dim: int) -> None:
    head = EmbeddingHead(in_dim, out_dim)
    W = head.linear.weight  # [out, in]
    gram = W @ W.T if out_dim <= in_dim else W.T @ W
    torch.testing.assert_close(gram, torch.eye(min(in_dim, out_dim)), atol=1e-5, rtol=0)
    assert torch.equal(head.linear.bias, torch.zeros(out_dim))


def test_head_output_and_normalisation() -> None:
    head = EmbeddingHead(5, 3)
    x = torch.randn(7, 5)
    torch.testing.assert_close(head(x), x @ head.linear.weight.T)  # zero bias at init
    normed = EmbeddingHead(5, 3, normalize=True)
    torch.testing.assert_close(normed(x).norm(dim=1), torch.ones(7))
    assert not torch.allclose(EmbeddingHead(5, 3, init="default").linear.bias, torch.zeros(3))
    with pytest.raises(ValueError, match="head init"):
        EmbeddingHead(5, 3, init="xavier")


def test_l2_normalize() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(l2_normalize(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


# --- EMA ----------------------------------------------------------------------------------------


def test_ema_momentum_zero_copies_the_student() -> None:
    student, teacher = _student_teacher()
    _train_student_a_bit(student)
    ema_update(teacher, student, momentum=0.0)
    s_state = student.state_dict()
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, s_state[key]), key
    assert int(teacher.backbone.bn.num_batches_tracked) == 2


def test_ema_momentum_one_freezes_the_teacher() -> None:
    student, teacher = _student_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _train_student_a_bit(student)
    ema_update(teacher, student, momentum=1.0, )
    for key, value in teacher.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == 2  # integer buffers are copied, whatever m is
        else:
            assert torch.equal(value, before[key]), key


def test_ema_averages_parameters_and_bn_buffers() -> None:
    student, teacher = _student_teacher()
    _train_student_a_bit(student)
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s = student.state_dict()
    ema_update(teacher, student, momentum=0.9)
    for key in ("backbone.conv.weight", "heads.g.linear.weight", "backbone.bn.running_mean", "backbone.bn.running_var"):
        torch.testing.assert_close(teacher.state_dict()[key], 0.9 * t0[key] + 0.1 * s[key])
    assert torch.equal(teacher.backbone.bn.num_batches_tracked, s["backbone.bn.num_batches_tracked"])
    assert "heads.f.linear.weight" not in teacher.state_dict()  # student-only keys skipped


def test_ema_skip_prefixes_and_errors() -> None:
    student, teacher = _student_teacher()
    _train_student_a_bit(student)
    head_before = teacher.heads["g"].linear.weight.clone()
    ema_update(teacher, student, momentum=0.0, skip_prefixes=("heads.",))
    assert torch.equal(teacher.heads["g"].linear.weight, head_before)
    assert torch.equal(teacher.backbone.conv.weight, student.backbone.conv.weight)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(teacher, student, momentum=1.5)
    wide = Heads({"g": 9})
    with pytest.raises(ValueError, match="heads.g.linear.weight"):
        ema_update(wide, student, momentum=0.5)
