"""Optimizers and learning-rate schedules, including AdamP (the optimizer of the STML and PLM code).

AdamP (Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights", ICLR 2021, Algorithm 2) is AdamW plus one projection. For a weight w with more than one
dimension, the update direction v (Adam's bias-corrected m̂ / (√v̂ + ε), or its Nesterov variant) is
tested for scale invariance of w, first per output channel (rows of ``w.view(out, -1)``) and then for
the whole layer (``w.view(1, -1)``). If every row's ``|cos(w_row, ∇_w_row)|`` is below
``delta / sqrt(row length)``, the gradient is (nearly) orthogonal to w, i.e. w is scale-invariant;
then the radial part is removed from each row,

    v ← v − ŵ (ŵ · v),   ŵ = w_row / ‖w_row‖,

and the decoupled weight decay of that tensor is scaled by ``wd_ratio``. Otherwise the update is
exactly AdamW's:

    w ← w (1 − lr · wd · r) − lr · v / (1 − β₁ᵗ),   r = wd_ratio if projected else 1.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.optim import Optimizer

OPTIMIZERS = ("adam", "adamw", "sgd", "adamp")
SCHEDULERS = ("cosine", "constant", "step")


class AdamP(Optimizer):
    """AdamP with decoupled weight decay (see the module docstring).

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: Adam's (β₁, β₂).
        eps: Adam's ε, also the norm guard of the projection.
        weight_decay: decoupled weight decay (AdamW-style).
        delta: threshold of the scale-invariance test, ``|cos| < delta / sqrt(dim)``.
        wd_ratio: weight-decay multiplier for projected (scale-invariant) weights.
        nesterov: use ``β₁ m + (1 − β₁) g`` instead of m in the update.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1,
                 nesterov: bool = False) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"AdamP needs lr, eps, weight_decay >= 0, got {lr}, {eps}, {weight_decay}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamP betas must lie in [0, 1), got {betas}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "delta": delta,
                    "wd_ratio": wd_ratio, "nesterov": nesterov}
        super().__init__(params, defaults)

    @staticmethod
    def _project(p: Tensor, grad: Tensor, perturb: Tensor, delta: float, wd_ratio: float,
                 eps: float) -> tuple[Tensor, float]:
        """Remove the radial component of ``perturb`` if ``p`` looks scale-invariant (per channel, then layer)."""
        for rows in (p.shape[0], 1):
            w = p.reshape(rows, -1)
            cosine = F.cosine_similarity(grad.reshape(rows, -1), w, dim=1, eps=eps).abs()
            if cosine.max() < delta / math.sqrt(w.shape[1]):
                w_hat = w / w.norm(dim=1, keepdim=True).add(eps)
                v = perturb.reshape(rows, -1)
                v = v - w_hat * (w_hat * v).sum(dim=1, keepdim=True)
                return v.view_as(p), wd_ratio
        return perturb, 1.0

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("AdamP does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                bias_correction1 = 1.0 - beta1 ** state["step"]
                bias_correction2 = 1.0 - beta2 ** state["step"]
                denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
                if group["nesterov"]:
                    perturb = (beta1 * exp_avg + (1.0 - beta1) * grad) / denom
                else:
                    perturb = exp_avg / denom
                ratio = 1.0
                if p.dim() > 1:
                    perturb, ratio = self._project(p, grad, perturb, group["delta"], group["wd_ratio"], group["eps"])
                if group["weight_decay"] > 0:
                    p.mul_(1.0 - group["lr"] * group["weight_decay"] * ratio)
                p.add_(perturb, alpha=-group["lr"] / bias_correction1)
        return loss


def build_optimizer(name: str, param_groups: Iterable[Any], lr: float, weight_decay: float = 0.0,
                    **kwargs: Any) -> Optimizer:
    """``adam`` (L2 penalty in the gradient), ``adamw`` / ``adamp`` (decoupled decay) or ``sgd``.

    Args:
        name: optimizer name.
        param_groups: parameters, or group dicts (which may set their own ``lr`` / ``weight_decay``).
        lr, weight_decay: defaults for groups that do not set them.
        kwargs: passed on (``betas``, ``eps``; ``momentum``/``nesterov`` for SGD, default momentum 0.9;
            ``nesterov``, ``delta``, ``wd_ratio`` for AdamP, default ``nesterov=True`` as in STML).
    """
    groups = list(param_groups)
    if not groups:
        raise ValueError("build_optimizer got no parameters; is every parameter frozen?")
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    if name == "sgd":
        kwargs.setdefault("momentum", 0.9)
        return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    if name == "adamp":
        kwargs.setdefault("nesterov", True)
        return AdamP(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def build_scheduler(name: str, optimizer: Optimizer, epochs: int, delay: int = 0,
                    **kwargs: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch learning-rate schedule (call ``scheduler.step()`` once at the end of every epoch).

    Args:
        name: ``cosine`` (cosine annealing from each group's lr to ``eta_min``, default 0, over
            ``epochs``), ``constant``, or ``step`` (multiply by ``gamma``, default 0.5, every
            ``step_size`` epochs, default 10: DRML's StepLR).
        optimizer: the optimizer whose groups are scheduled.
        epochs: the number of epochs of the run.
        delay: epochs held at every group's initial lr before the schedule starts (a warm-up that
            does not count): the lr of epoch ``e`` is the undelayed schedule's lr of epoch
            ``max(e - delay, 0)``, and cosine anneals over ``epochs - delay``. With ``delay = 1`` the
            StepLR halvings come after epochs 11, 21, ... (epochs counted from 1), as in GeDML, whose
            schedulers do not step during warm-up (``launcher/trainers/base_trainer.py`` L334).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if delay < 0:
        raise ValueError(f"delay must be >= 0, got {delay}")
    if delay and name in ("cosine", "step"):
        return _delayed_scheduler(name, optimizer, epochs, delay, **kwargs)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=kwargs.get("eta_min", 0.0))
    if name == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=kwargs.get("step_size", 10),
                                               gamma=kwargs.get("gamma", 0.5))
    raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")


def _delayed_scheduler(name: str, optimizer: Optimizer, epochs: int, delay: int,
                       **kwargs: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """``cosine`` / ``step`` in closed form on the shifted epoch ``max(e - delay, 0)``."""
    if name == "step":
        step_size, gamma = kwargs.get("step_size", 10), kwargs.get("gamma", 0.5)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: gamma ** (max(e - delay, 0) // step_size))
    span, eta_min = max(epochs - delay, 1), kwargs.get("eta_min", 0.0)

    def cosine(base: float):
        def factor(e: int) -> float:
            t = min(max(e - delay, 0), span)
            return (eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / span)) / 2) / base if base else 1.0
        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [cosine(g["lr"]) for g in optimizer.param_groups])
