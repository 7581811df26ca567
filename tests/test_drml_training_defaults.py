"""DRML's training defaults against the official code (zbr17/DRML on zbr17/GeDML; issue 25).

Each test pins one default and shows that dmlkit's earlier behaviour, kept as a named option, differs.
"""
from __future__ import annotations

import math

import pytest
import torch

from dmlkit.engine.config import resolve_config
from dmlkit.losses.relational import DRMLLoss
from dmlkit.methods.base import BuildInfo
from dmlkit.methods.drml import DRML
from dmlkit.models.optim import build_optimizer, build_scheduler


def _method(**options) -> DRML:
    info = BuildInfo(channels=1, image_size=28, num_train=60, num_classes=3, dataset="fashion-mnist",
                     views_preset="grey28")
    return DRML.from_options({"node_dim": 16, "warmup_epochs": 0, **options}, info)


# --- proxy tables: distribution check --------------------------------------------------------------


@pytest.mark.parametrize("base", ["proxy_anchor", "cosface"])
def test_branch_proxies_are_kaiming_normal_a_sqrt5_and_final_proxies_kaiming_uniform(base):
    torch.manual_seed(0)
    C, K, d = 100, 4, 128  # CUB: 100 classes, 4 branches of 128 (multi_proxy_collector.py L35-42)
    loss = DRMLLoss(base, C, K, d)
    tables = [b.loss.proxies if base == "proxy_anchor" else b.loss.W.T for b in loss.branch_losses]
    values = torch.cat([t.detach().flatten() for t in tables])  # 51,200 draws
    assert values.std().item() == pytest.approx(1 / math.sqrt(3 * d), rel=0.03)  # gain √(1/3), fan_in d: .051
    assert values.mean().abs().item() < 0.002
    kurtosis = ((values - values.mean()) ** 4).mean() / values.var() ** 2
    assert kurtosis.item() == pytest.approx(3.0, abs=0.15)  # normal, not uniform (1.8)
    final = loss.final_loss.loss.proxies if base == "proxy_anchor" else loss.final_loss.loss.W.T
    bound = 1 / math.sqrt(K * d)  # kaiming_uniform_(a=√5) of proxy_collector.py L32: U(±1/√512)
    assert final.abs().max().item() <= bound and final.abs().max().item() > 0.95 * bound

    earlier = DRMLLoss(base, C, K, d, branch_proxy_init="kaiming_normal")  # dmlkit's earlier fan_out init
    table = earlier.branch_losses[0].loss.proxies if base == "proxy_anchor" else earlier.branch_losses[0].loss.W
    assert table.std().item() == pytest.approx(math.sqrt(2 / C), rel=0.05)  # .141: ~2.8x the official


def test_method_passes_its_branch_proxy_init():
    official = _method().objective.branch_losses[0].loss.proxies
    wide = _method(branch_proxy_init="kaiming_normal").objective.branch_losses[0].loss.proxies
    assert official.std().item() == pytest.approx(1 / math.sqrt(3 * 16), rel=0.2)  # 3 classes x 16: few draws
    assert wide.std().item() > 2 * official.std().item()
    with pytest.raises(ValueError, match="proxy_init must be one of"):
        _method(branch_proxy_init="xavier")


# --- gradient clipping: counter --------------------------------------------------------------------


def _step(method: DRML) -> None:
    method.zero_grad()
    batch = {"image": torch.rand(9, 1, 28, 28), "label": torch.arange(9) % 3, "index": torch.arange(9)}
    method.training_loss(batch)["loss"].backward()
    method.before_optimizer_step()


def _norm(params) -> float:
    return math.sqrt(sum(p.grad.pow(2).sum().item() for p in params if p.grad is not None))


def test_gradients_are_clipped_on_the_first_step_only():
    torch.manual_seed(0)
    method = _method(grad_clip=1e-3)
    _step(method)  # step 1: clipped per official group
    assert (method.optimizer_steps, method.clipped_steps) == (1, 1)
    for group in (method.backbone, method.head, method.objective.branch_losses, method.objective.final_loss):
        assert _norm(group.parameters()) <= 1e-3 + 1e-6
    for _ in range(3):  # steps 2-4: the official clipper's generator is exhausted, nothing is clipped
        _step(method)
    assert (method.optimizer_steps, method.clipped_steps) == (4, 1)
    assert _norm(method.head.parameters()) > 1e-2


def test_every_step_clipping_is_the_named_alternative():
    method = _method(grad_clip=1e-3, grad_clip_when="every_step")
    for _ in range(3):
        _step(method)
    assert (method.optimizer_steps, method.clipped_steps) == (3, 3)
    assert _norm(method.head.parameters()) <= 1e-3 + 1e-6
    off = _method(grad_clip=0.0)
    _step(off)
    assert off.clipped_steps == 0
    with pytest.raises(ValueError, match="grad_clip_when must be one of"):
        _method(grad_clip_when="sometimes")


def test_branch_tables_are_clipped_jointly_as_one_collector():
    torch.manual_seed(0)
    method = _method(grad_clip=1e-3)
    _step(method)
    joint = _norm(method.objective.branch_losses.parameters())
    assert joint <= 1e-3 + 1e-6  # one "ensemble" group: the K tables share one norm budget


# --- warm-up and StepLR: schedule trace ------------------------------------------------------------


def _official_trace(epochs: int, warm_up: int) -> list[float]:
    """GeDML's loop (base_manager.py L270-278, base_trainer.py L330-341): StepLR(10, 0.5) that does not
    step in the warm-up epochs, stepped after every other epoch; the lr each epoch trains with."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    trace = []
    for epoch in range(epochs):
        trace.append(opt.param_groups[0]["lr"])
        if epoch >= warm_up:
            opt.step()
            sched.step()
    return trace


def _dmlkit_trace(epochs: int, delay: int, name: str = "step") -> list[float]:
    opt = build_optimizer("adamw", [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}], lr=1.0)
    sched = build_scheduler(name, opt, epochs=epochs, delay=delay)
    trace = []
    for _ in range(epochs):
        trace.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()  # Lightning steps an epoch-interval scheduler after every epoch, warm-up included
    return trace


def test_step_schedule_holds_during_warm_up_as_the_official_trainer():
    method = _method(warmup_epochs=1)
    trace = _dmlkit_trace(61, method.scheduler_delay())
    assert trace == pytest.approx(_official_trace(61, warm_up=1))
    # hand values (epochs counted from 0): 0-10 at lr, 11-20 at lr/2, 21-30 at lr/4, 51-60 at lr/32
    assert trace[10] == 1.0 and trace[11] == 0.5 and trace[20] == 0.5 and trace[21] == 0.25 and trace[60] == 1 / 32


def test_stepping_in_warm_up_is_the_named_alternative_and_halves_one_epoch_early():
    method = _method(warmup_epochs=1, step_scheduler_in_warmup=True)
    assert method.scheduler_delay() == 0
    trace = _dmlkit_trace(61, 0)
    assert trace == pytest.approx(_official_trace(61, warm_up=0))
    assert trace[10] == 0.5  # one epoch before the official halving
    assert _method(warmup_epochs=0).scheduler_delay() == 0


def test_delayed_cosine_holds_then_anneals_over_the_remaining_epochs():
    trace = _dmlkit_trace(11, 1, "cosine")
    assert trace[0] == trace[1] == 1.0
    expected = [0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(10)]
    assert trace[1:] == pytest.approx(expected)
    assert _dmlkit_trace(5, 0, "cosine") == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 5)) for t in range(5)])


# --- stopping: the method's defaults ---------------------------------------------------------------


def test_drml_run_defaults_are_the_official_ones():
    config = resolve_config({"method": "drml"})
    assert (config.epochs, config.batch_size, config.lr, config.weight_decay) == (61, 180, 5e-5, 1e-4)
    assert (config.optimizer, config.scheduler) == ("adamw", "step")
    assert (config.early_stop_patience, config.early_stop_monitor, config.early_stop_collapse) == (15, "val_recall@1", 0.6)
    off = resolve_config({"method": "drml", "early_stop_patience": 0})
    assert off.early_stop_patience == 0
    mlrc = resolve_config({"method": "drml", "preset": "drml-cub200-mlrc"})
    assert mlrc.early_stop_monitor == "val_map@r"
