"""Exponential-moving-average (momentum) teachers: STML's teacher and PLM's momentum encoder.

One update, over the teacher's whole state dict (specs/STML.md §6, PLM.md §2):

    θ_t ← m θ_t + (1 − m) θ_s      for parameters and floating-point buffers (BN running statistics)
    θ_t ← θ_s                      for integer buffers (BN ``num_batches_tracked``)

Keys present only in the student (STML's extra ``f`` head) are skipped; keys present only in the teacher
keep their values.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, skip_prefixes: Iterable[str] = ()) -> None:
    """In-place EMA of ``student`` into ``teacher`` (see the module docstring).

    Args:
        teacher, student: modules whose state-dict keys match (the student may have more).
        momentum: m in [0, 1]; m = 0 copies the student, m = 1 leaves the teacher unchanged.
        skip_prefixes: teacher keys starting with any of these are left untouched.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    skip = tuple(skip_prefixes)
    student_state = student.state_dict()
    averaged: list[Tensor] = []
    sources: list[Tensor] = []
    for key, t in teacher.state_dict().items():
        if (skip and key.startswith(skip)) or key not in student_state:
            continue
        s = student_state[key]
        if s.shape != t.shape:
            raise ValueError(f"EMA: '{key}' has shape {tuple(t.shape)} in the teacher and {tuple(s.shape)} in the student")
        if t.is_floating_point():
            averaged.append(t)
            sources.append(s.to(device=t.device, dtype=t.dtype))
        else:
            t.copy_(s)
    if averaged:  # θ_t + (1 − m)(θ_s − θ_t), fused over all tensors; exact at m = 0 and m = 1
        torch._foreach_lerp_(averaged, sources, 1.0 - momentum)
