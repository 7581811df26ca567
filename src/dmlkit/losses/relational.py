"""DRML's objective (spec DRML.md §2.3, §3):

    J = Σ_k L_m^(k)({(y^k(x), ℓ_x)}_{x: a(x) = k}) + λ_emb L_m({(f(x), ℓ_x)}_{x ∈ B}) + λ_rec J_rec

with ``a(x) = argmin_k r_k(x)`` the branch whose decoder reconstructs ``x`` best (adaptive ensemble
learning) and ``J_rec = mean_{x,k} r_k(x)``. The base loss ``L_m`` is instantiated K + 1 times, each
with its own proxy table / class boundaries (:func:`dmlkit.losses.supervised.build_metric_loss`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dmlkit.losses.supervised import MetricLoss, build_metric_loss
from dmlkit.models.relational import RelationalOutput

RECON_ERRORS = ("mse_per_dim", "l2_mean")


def reconstruction_errors(recon: Tensor, target: Tensor, mode: str = "mse_per_dim") -> Tensor:
    """Per-sample, per-branch error ``r [B, K]`` from ``recon, target [B, K, n]``.

    ``mse_per_dim`` (code): ``r_k = ‖ĥ^k - sg(h^k)‖² / n``; ``l2_mean`` (paper description): the
    unsquared norm ``‖ĥ^k - sg(h^k)‖``.
    """
    if recon.shape != target.shape or recon.dim() != 3:
        raise ValueError(f"recon and target must both be [B, K, n], got {list(recon.shape)} and {list(target.shape)}")
    diff = recon - target.detach()
    if mode == "mse_per_dim":
        return diff.pow(2).mean(dim=-1)
    if mode == "l2_mean":
        return diff.norm(dim=-1)
    raise ValueError(f"recon_error must be one of {RECON_ERRORS}, got '{mode}'")


def assign_branches(errors: Tensor) -> Tensor:
    """``a(x) = argmin_k r_k(x)`` ``[B]``; ties go to the lowest branch index."""
    return errors.detach().argmin(dim=1)


class DRMLLoss(nn.Module):
    """The K branch losses, the final-embedding loss and the reconstruction loss.

    Args:
        base_loss: ``triplet`` | ``margin`` | ``proxy_anchor`` | ``cosface``.
        num_classes: C, the size of every proxy / β table.
        num_branches: K; node_dim: d; the final embedding has K·d dimensions.
        lambda_emb, lambda_rec: weights of ``J_emb`` (10) and ``J_rec`` (1).
        recon_error: see :func:`reconstruction_errors`.
        branch_proxy_init: init of the K branch tables (:func:`dmlkit.losses.supervised._init_table`).
        loss_kw: base-loss options passed to :func:`build_metric_loss` (miner, margins, scales ...).

    Branch proxy tables are ``kaiming_normal_(a=√5)`` (std 1/√(3d) ≈ .051 for d = 128), the final
    one ``kaiming_uniform_(a=√5)``, as in the code (``branch_proxy_init`` picks another branch init).
    ``forward(out, labels [B])`` returns ``{"loss", "branch", "emb", "rec"}`` and records the branch
    sizes of the batch in ``last_branch_sizes`` (``[K]`` long).
    """

    def __init__(
        self,
        base_loss: str,
        num_classes: int,
        num_branches: int,
        node_dim: int,
        lambda_emb: float = 10.0,
        lambda_rec: float = 1.0,
        recon_error: str = "mse_per_dim",
        branch_proxy_init: str = "kaiming_normal_a5",
        **loss_kw,
    ) -> None:
        super().__init__()
        if recon_error not in RECON_ERRORS:
            raise ValueError(f"recon_error must be one of {RECON_ERRORS}, got '{recon_error}'")
        loss_kw.pop("proxy_init", None)
        self.branch_losses = nn.ModuleList(
            build_metric_loss(base_loss, num_classes, node_dim, proxy_init=branch_proxy_init, **loss_kw)
            for _ in range(num_branches)
        )
        self.final_loss: MetricLoss = build_metric_loss(
            base_loss, num_classes, num_branches * node_dim, proxy_init="kaiming_uniform", **loss_kw
        )
        self.num_branches = num_branches
        self.lambda_emb = lambda_emb
        self.lambda_rec = lambda_rec
        self.recon_error = recon_error
        self.last_branch_sizes = torch.zeros(num_branches, dtype=torch.long)

    def forward(self, out: RelationalOutput, labels: Tensor) -> dict[str, Tensor]:
        errors = reconstruction_errors(out.recon, out.targets, self.recon_error)
        assignment = assign_branches(errors)
        branch = out.embedding.new_zeros(())
        sizes = []
        for k, loss_k in enumerate(self.branch_losses):  # K small: one base loss per branch
            mine = assignment == k
            sizes.append(mine.sum())
            branch = branch + loss_k(out.nodes[mine, k], labels[mine])  # empty branch -> exact 0
        self.last_branch_sizes = torch.stack(sizes).detach().cpu()
        emb = self.final_loss(out.embedding, labels)
        rec = errors.mean()  # J_rec; reaches the decoders only
        total = branch + self.lambda_emb * emb + self.lambda_rec * rec
        return {"loss": total, "branch": branch, "emb": emb, "rec": rec}


__all__ = ["DRMLLoss", "assign_branches", "reconstruction_errors"]
