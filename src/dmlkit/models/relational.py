"""DRML's relational module (Zheng et al., ICCV 2021; spec DRML.md §2, §6).

The pooled trunk feature ``h`` is cut into K branch inputs. Each branch gives one unit-norm node
``y^k``; a decoder per branch reconstructs its (detached) input from the (detached) node, which
decides the branch a sample is assigned to. The K nodes of one image form a graph: edges are scored
from detached meta-features, one round of messages is passed, and a shared integrator initialised
to ``[I | 0]`` updates every node. The concatenation of the updated nodes is the relation-aware
embedding ``f(x)`` — the test-time embedding, which depends on ``x`` alone.

Parameters of the K branches are stored stacked (``[K, out, in]``) so that every branch runs in one
batched matmul; each slice is initialised like the official per-branch ``nn.Linear``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BRANCH_INPUTS = ("chunk", "full")
EDGE_SCORES = ("relu_l1", "linear_sum")
INTEGRATOR_INITS = ("identity", "kaiming")


@dataclass
class RelationalOutput:
    """Everything one forward pass produces.

    Attributes:
        nodes: ``[B, K, d]`` unit-norm branch nodes ``y^k`` (graph-connected to the trunk).
        embedding: ``[B, K*d]`` relation-aware embedding ``f(x) = [ŷ^1; ..; ŷ^K]`` (not normalised).
        recon: ``[B, K, n]`` decoder outputs ``ĥ^k = D_k sg(y^k) + c_k``.
        targets: ``[B, K, n]`` detached branch inputs ``sg(h^k)`` the decoders reconstruct.
        edges: ``[B, K, K]`` normalised edge weights ``ẽ[b, i, j]`` (source i, receiver j).
        messages: ``[B, K, d]`` messages ``m^j = Σ_i ẽ_ij y^i``.
    """

    nodes: Tensor
    embedding: Tensor
    recon: Tensor
    targets: Tensor
    edges: Tensor
    messages: Tensor


class _BranchLinear(nn.Module):
    """K independent affine maps applied branch-wise: ``[B, K, in] -> [B, K, out]``."""

    def __init__(self, num_branches: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_branches, out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(num_branches, out_dim))
        for k in range(num_branches):  # Kaiming-normal (fan_out) per branch, zero bias (spec §2)
            nn.init.kaiming_normal_(self.weight.data[k], mode="fan_out")

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bki,koi->bko", x, self.weight) + self.bias


def normalise_edges(scores: Tensor, mode: str = "relu_l1", eps: float = 1e-12) -> Tensor:
    """Edge weights ``ẽ_ij`` from raw scores ``s_ij`` ``[B, K(source), K(receiver)]``.

    ``relu_l1`` (code): ``e = ReLU(s)``, ``ẽ_ij = e_ij / max(Σ_i' e_i'j, eps)`` — non-negative, each
    receiver's incoming weights sum to 1 unless they are all 0 (then the message is 0).
    ``linear_sum`` (paper description): ``ẽ_ij = s_ij / Σ_i' s_i'j`` with the denominator pushed
    away from 0 to ``±eps``.
    """
    if mode == "relu_l1":
        e = F.relu(scores)
        return e / e.sum(dim=1, keepdim=True).clamp_min(eps)
    if mode == "linear_sum":
        den = scores.sum(dim=1, keepdim=True)
        sign = torch.where(den < 0, -1.0, 1.0).to(den)
        return scores / torch.where(den.abs() < eps, sign * eps, den)
    raise ValueError(f"edge_score must be one of {EDGE_SCORES}, got '{mode}'")


class RelationalHead(nn.Module):
    """The DRML head on top of a pooled trunk feature.

    Args:
        in_dim: trunk feature size ``n_h`` (1024 for BN-Inception).
        num_branches: K (4).
        node_dim: d, the size of every node (128; 32 in MLRC mode).
        branch_input: ``"chunk"`` (code: branch k reads the k-th contiguous chunk of ``h``) or
            ``"full"`` (paper description: every branch reads all of ``h``).
        edge_score: ``"relu_l1"`` (code) or ``"linear_sum"`` (paper description), see
            :func:`normalise_edges`.
        emb_grad_into_nodes: True (code): ``J_emb`` reaches the nodes (and the trunk) through the
            messages and the integrator input. False (paper description): the nodes are detached there.
        integrator_init: ``"identity"`` (code: ``U = [I | 0]``, ``b_U = 0``) or ``"kaiming"``.

    ``forward(h [B, in_dim]) -> RelationalOutput``; ``embedding`` is the test-time embedding.
    """

    def __init__(
        self,
        in_dim: int,
        num_branches: int = 4,
        node_dim: int = 128,
        branch_input: str = "chunk",
        edge_score: str = "relu_l1",
        emb_grad_into_nodes: bool = True,
        integrator_init: str = "identity",
    ) -> None:
        super().__init__()
        if num_branches < 1 or node_dim < 1:
            raise ValueError(f"num_branches and node_dim must be positive, got {num_branches} and {node_dim}")
        if branch_input not in BRANCH_INPUTS:
            raise ValueError(f"branch_input must be one of {BRANCH_INPUTS}, got '{branch_input}'")
        if edge_score not in EDGE_SCORES:
            raise ValueError(f"edge_score must be one of {EDGE_SCORES}, got '{edge_score}'")
        if integrator_init not in INTEGRATOR_INITS:
            raise ValueError(f"integrator_init must be one of {INTEGRATOR_INITS}, got '{integrator_init}'")
        if branch_input == "chunk" and in_dim % num_branches:
            raise ValueError(
                f"branch_input='chunk' cuts the {in_dim}-d trunk feature into {num_branches} equal chunks; "
                f"choose num_branches dividing {in_dim} or branch_input='full'"
            )
        self.in_dim = in_dim
        self.num_branches = num_branches
        self.node_dim = node_dim
        self.branch_input = branch_input
        self.edge_score = edge_score
        self.emb_grad_into_nodes = emb_grad_into_nodes
        self.branch_dim = in_dim // num_branches if branch_input == "chunk" else in_dim
        self.out_dim = num_branches * node_dim

        self.node = _BranchLinear(num_branches, self.branch_dim, node_dim)  # W_k, b_k
        self.meta_a = _BranchLinear(num_branches, self.branch_dim, node_dim)  # A_k, a_k
        self.meta_b = _BranchLinear(num_branches, self.branch_dim, node_dim)  # B_k, b'_k
        self.decoder = _BranchLinear(num_branches, node_dim, self.branch_dim)  # D_k, c_k
        self.scorer = nn.Linear(node_dim, 1)  # (w, c), shared by all ordered pairs
        nn.init.kaiming_normal_(self.scorer.weight, mode="fan_out")
        nn.init.zeros_(self.scorer.bias)
        self.integrator = nn.Linear(2 * node_dim, node_dim)  # U, b_U, shared by all nodes
        if integrator_init == "identity":
            with torch.no_grad():
                self.integrator.weight.zero_()
                self.integrator.weight[:, :node_dim].copy_(torch.eye(node_dim))
        else:
            nn.init.kaiming_normal_(self.integrator.weight, mode="fan_out")
        nn.init.zeros_(self.integrator.bias)

    def branch_inputs(self, h: Tensor) -> Tensor:
        """``[B, in_dim] -> [B, K, branch_dim]``: contiguous chunks ``h^k``, or ``h`` repeated."""
        if h.dim() != 2 or h.shape[1] != self.in_dim:
            raise ValueError(f"RelationalHead expects features [B, {self.in_dim}], got {list(h.shape)}")
        if self.branch_input == "chunk":
            return h.reshape(h.shape[0], self.num_branches, self.branch_dim)
        return h.unsqueeze(1).expand(-1, self.num_branches, -1)

    def forward(self, h: Tensor) -> RelationalOutput:
        x = self.branch_inputs(h)
        x_sg = x.detach()
        nodes = F.normalize(self.node(x), dim=-1)  # y^k = normalize(W_k h^k + b_k)
        recon = self.decoder(nodes.detach())  # ĥ^k = D_k sg(y^k) + c_k
        u, v = self.meta_a(x_sg), self.meta_b(x_sg)  # meta-features from sg(h^k)
        diff = u.unsqueeze(2) - v.unsqueeze(1)  # [B, K(i), K(j), d]: u^i - v^j
        scores = self.scorer(diff).squeeze(-1)  # w^T(u^i - v^j) + c; explicit dim keeps B = 1 intact
        edges = normalise_edges(scores, self.edge_score)  # normalised over sources i per receiver j
        y = nodes if self.emb_grad_into_nodes else nodes.detach()
        messages = torch.einsum("bij,bid->bjd", edges, y)  # m^j = Σ_i ẽ_ij y^i
        updated = self.integrator(torch.cat([y, messages], dim=-1))  # ŷ^j = U[y^j; m^j] + b_U
        return RelationalOutput(
            nodes=nodes,
            embedding=updated.reshape(h.shape[0], self.out_dim),
            recon=recon,
            targets=x_sg,
            edges=edges,
            messages=messages,
        )

    def relation_parameters(self) -> list[nn.Parameter]:
        """Parameters only ``J_emb`` trains: meta-features, scorer and integrator."""
        return [*self.meta_a.parameters(), *self.meta_b.parameters(), *self.scorer.parameters(),
                *self.integrator.parameters()]


__all__ = ["RelationalHead", "RelationalOutput", "normalise_edges"]
