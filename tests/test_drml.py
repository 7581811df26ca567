"""DRML: the relational head, its objective and the method (spec DRML.md §10)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmlkit.losses.relational import DRMLLoss, assign_branches, reconstruction_errors
from dmlkit.models.relational import RelationalHead, normalise_edges

K, D, IN = 4, 8, 32  # branches, node size, trunk feature size (chunks of 8)


def _head(**kw) -> RelationalHead:
    return RelationalHead(IN, K, D, **kw)


# --- 1. identity at initialisation -------------------------------------------------------------------


def test_identity_integrator_makes_embedding_the_concatenated_nodes():
    head = _head()
    out = head(torch.randn(5, IN))
    assert torch.equal(out.embedding, out.nodes.reshape(5, K * D))
    assert torch.allclose(out.embedding.pow(2).sum(1), torch.full((5,), float(K)))
    assert torch.allclose(F.normalize(out.embedding, dim=1), out.nodes.reshape(5, -1) / 2.0)


def test_kaiming_integrator_is_not_the_identity():
    out = _head(integrator_init="kaiming")(torch.randn(5, IN))
    assert not torch.allclose(out.embedding, out.nodes.reshape(5, -1))


# --- 2. edge weights -----------------------------------------------------------------------------------


def test_relu_l1_edges_hand_case():
    # scores[i, j] (source i, receiver j): receiver 0 gets ReLU(1, 3) -> (1/4, 3/4); receiver 1 gets nothing
    scores = torch.tensor([[[1.0, -1.0], [3.0, -2.0]]])
    edges = normalise_edges(scores, "relu_l1")
    assert torch.allclose(edges, torch.tensor([[[0.25, 0.0], [0.75, 0.0]]]))


def test_linear_sum_edges_hand_case_and_guard():
    scores = torch.tensor([[[1.0, 2.0], [3.0, -2.0]]])  # receiver 1 sums to 0: guarded, finite
    edges = normalise_edges(scores, "linear_sum")
    assert torch.allclose(edges[0, :, 0], torch.tensor([0.25, 0.75]))
    assert torch.isfinite(edges).all()


def test_incoming_edge_weights_sum_to_one_and_messages_match_definition():
    head = _head()
    with torch.no_grad():
        head.scorer.bias.fill_(0.3)
    out = head(torch.randn(16, IN))
    e = out.edges
    assert (e >= 0).all()
    sums = e.sum(dim=1)  # over sources i, per receiver j
    zero = (e == 0).all(dim=1)
    assert torch.allclose(sums[~zero], torch.ones_like(sums[~zero]))
    assert (out.messages[zero] == 0).all()
    assert (e.diagonal(dim1=1, dim2=2) > 0).any()  # self-edges i = j are scored too
    # message m^j = Σ_i ẽ_ij y^i, by an explicit loop
    ref = torch.zeros_like(out.messages)
    for j in range(K):
        for i in range(K):
            ref[:, j] += e[:, i, j, None] * out.nodes[:, i]
    assert torch.allclose(out.messages, ref, atol=1e-6)
    # edges come from the meta-features: w^T(u^i - v^j) + c by a loop
    x = head.branch_inputs(torch.randn(3, IN))
    u = torch.stack([x[:, k] @ head.meta_a.weight[k].T + head.meta_a.bias[k] for k in range(K)], 1)
    v = torch.stack([x[:, k] @ head.meta_b.weight[k].T + head.meta_b.bias[k] for k in range(K)], 1)
    s = torch.einsum("bijd,d->bij", u[:, :, None] - v[:, None], head.scorer.weight[0]) + head.scorer.bias
    h = x.reshape(3, IN)
    assert torch.allclose(head(h).edges, normalise_edges(s, "relu_l1"), atol=1e-6)


def test_full_branch_input_reads_the_whole_feature():
    head = _head(branch_input="full")
    assert head.branch_dim == IN
    h = torch.randn(2, IN)
    out = head(h)
    ref = F.normalize(h @ head.node.weight[3].T + head.node.bias[3], dim=-1)
    assert torch.allclose(out.nodes[:, 3], ref, atol=1e-6)


def test_bad_head_options_raise():
    with pytest.raises(ValueError, match="equal chunks"):
        RelationalHead(30, 4, 8)
    with pytest.raises(ValueError, match="edge_score"):
        _head(edge_score="softmax")
    with pytest.raises(ValueError, match="features"):
        _head()(torch.randn(2, IN + 1))


# --- 3. reconstruction and assignment ----------------------------------------------------------------


def test_reconstruction_errors_hand_case():
    recon = torch.zeros(1, 2, 4)
    target = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 3.0, 4.0]]])
    assert torch.allclose(reconstruction_errors(recon, target), torch.tensor([[1.0, 25.0 / 4]]))
    assert torch.allclose(reconstruction_errors(recon, target, "l2_mean"), torch.tensor([[2.0, 5.0]]))


def test_assignment_is_argmin_with_ties_to_lowest_index():
    errors = torch.tensor([[0.3, 0.1, 0.2, 0.9], [0.5, 0.5, 0.5, 0.5], [0.4, 0.4, 0.1, 0.1]])
    assert assign_branches(errors).tolist() == [1, 0, 2]


def _force_branch(head: RelationalHead, branch: int) -> None:
    """Every other decoder is made terrible, so branch ``branch`` reconstructs every sample best."""
    with torch.no_grad():
        for k in range(K):
            if k != branch:
                head.decoder.bias[k].fill_(100.0)


class _Spy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, emb, labels):
        self.calls.append((emb.detach(), labels))
        return emb.sum() * 0.0 + float(len(labels))


def test_branch_losses_see_exactly_their_assigned_nodes_and_labels():
    head = _head()
    loss = DRMLLoss("proxy_anchor", 3, K, D)
    spies = [_Spy() for _ in range(K)]
    loss.branch_losses = nn.ModuleList(spies)
    out = head(torch.randn(20, IN))
    labels = torch.arange(20) % 3
    loss(out, labels)
    a = assign_branches(reconstruction_errors(out.recon, out.targets))
    for k, spy in enumerate(spies):
        emb, lab = spy.calls[0]
        assert torch.equal(emb, out.nodes[a == k, k].detach())
        assert torch.equal(lab, labels[a == k])
    assert loss.last_branch_sizes.tolist() == [int((a == k).sum()) for k in range(K)]


@pytest.mark.parametrize("base", ["proxy_anchor", "cosface", "triplet", "margin"])
def test_empty_branches_contribute_exactly_zero(base):
    head = _head()
    _force_branch(head, 2)
    loss = DRMLLoss(base, 3, K, D)
    out = head(torch.randn(12, IN))
    labels = torch.arange(12) % 3
    parts = loss(out, labels)
    assert loss.last_branch_sizes.tolist() == [0, 0, 12, 0]
    for k in (0, 1, 3):
        assert loss.branch_losses[k](out.nodes[:0, k], labels[:0]).item() == 0.0
    parts["loss"].backward()
    assert torch.isfinite(parts["loss"])
    for k in (0, 1, 3):  # the code still steps them: explicit zero gradients
        for p in loss.branch_losses[k].parameters():
            assert p.grad is not None and (p.grad == 0).all()


# --- 4. gradient flow (spec §4) ---------------------------------------------------------------------


def _grad_flow(emb_grad_into_nodes: bool = True):
    torch.manual_seed(1)
    trunk = nn.Linear(6, IN)
    head = _head(emb_grad_into_nodes=emb_grad_into_nodes)
    with torch.no_grad():  # away from the identity init, the messages reach f (at init U's right half is 0)
        head.integrator.weight[:, D:].normal_(0, 0.3)
        head.scorer.bias.fill_(0.5)
    _force_branch(head, 2)
    loss = DRMLLoss("proxy_anchor", 3, K, D, pa_delta=0.2, pa_alpha=64.0)
    x, labels = torch.randn(12, 6), torch.arange(12) % 3
    groups = {
        "trunk": list(trunk.parameters()),
        **{f"node{k}": [head.node.weight[k], head.node.bias[k]] for k in range(K)},
        "meta": list(head.meta_a.parameters()) + list(head.meta_b.parameters()),
        "scorer": list(head.scorer.parameters()),
        "integrator": list(head.integrator.parameters()),
        "decoder": list(head.decoder.parameters()),
        **{f"proxies{k}": list(loss.branch_losses[k].parameters()) for k in range(K)},
        "final_proxies": list(loss.final_loss.parameters()),
    }
    params = [p for p in [*trunk.parameters(), *head.parameters(), *loss.parameters()]]
    reached = {}
    for term in ("branch", "emb", "rec"):
        for p in params:
            p.grad = None
        loss(head(trunk(x)), labels)[term].backward()
        # indexing a stacked parameter (node.weight[k]) is a view; read slices from the full grad
        out = {}
        for name, ps in groups.items():
            if name.startswith("node"):
                k = int(name[4:])
                g = [head.node.weight.grad, head.node.bias.grad]
                out[name] = any(t is not None and t[k].abs().sum() > 0 for t in g)
            else:
                out[name] = any(p.grad is not None and p.grad.abs().sum() > 0 for p in ps)
        reached[term] = {name for name, hit in out.items() if hit}
    return reached


def test_gradient_flow_matches_the_table():
    reached = _grad_flow()
    assert reached["rec"] == {"decoder"}
    assert reached["branch"] == {"trunk", "node2", "proxies2"}  # assigned branch only; never U
    assert reached["emb"] == {"trunk", "node0", "node1", "node2", "node3", "meta", "scorer", "integrator",
                              "final_proxies"}


def test_without_emb_grad_into_nodes_J_emb_trains_only_the_relation_module():
    reached = _grad_flow(emb_grad_into_nodes=False)
    assert reached["emb"] == {"meta", "scorer", "integrator", "final_proxies"}
    assert reached["rec"] == {"decoder"}


def test_edges_never_train_the_trunk_at_identity_init():
    # at U = [I | 0] the messages do not reach f: J_emb reaches only U's right half among relation params
    trunk, head = nn.Linear(6, IN), _head()
    loss = DRMLLoss("proxy_anchor", 3, K, D)
    loss(head(trunk(torch.randn(9, 6))), torch.arange(9) % 3)["emb"].backward()
    assert head.integrator.weight.grad[:, D:].abs().sum() > 0
    assert all(p.grad is None or (p.grad == 0).all() for p in [*head.meta_a.parameters(), *head.scorer.parameters()])


# --- 5. the method -----------------------------------------------------------------------------------


def _method(**options):
    from dmlkit.methods.base import BuildInfo
    from dmlkit.methods.drml import DRML

    info = BuildInfo(channels=1, image_size=28, num_train=60, num_classes=3, dataset="fashion-mnist",
                     views_preset="grey28")
    return DRML.from_options({"node_dim": 16, "backbone": "mnist-net", **options}, info)  # the old default


def test_test_time_embedding_does_not_depend_on_the_batch():
    method = _method().eval()
    images = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        alone = method.embed(images[:1])
        together = method.embed(images)
    assert alone.shape == (1, 64)
    assert torch.allclose(alone[0], together[0], atol=1e-6)
    assert torch.allclose(together.norm(dim=1), torch.ones(64))


@pytest.mark.parametrize("base", ["proxy_anchor", "cosface", "triplet", "margin"])
def test_training_loss_and_parameter_groups(base):
    method = _method(base_loss=base).train()
    batch = {"image": torch.rand(12, 1, 28, 28), "label": torch.arange(12) % 3, "index": torch.arange(12)}
    parts = method.training_loss(batch)
    assert set(parts) == {"loss", "branch", "emb", "rec"}
    assert torch.isfinite(parts["loss"])
    parts["loss"].backward()
    groups = method.parameter_groups(5e-5, 1e-4)
    expected = [5e-5, 1e-3] + ([] if base == "triplet" else [1e-2])  # the triplet loss has no parameters
    assert [g["lr"] for g in groups] == pytest.approx(expected)
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == sum(1 for p in method.parameters() if p.requires_grad)
    if base == "margin":
        betas = [p for p in groups[2]["params"] if p.shape == (3,)]
        assert len(betas) == K + 1 and all(torch.allclose(b, torch.full((3,), 1.2)) for b in betas)


def test_triplet_has_no_proxy_group():
    groups = _method(base_loss="triplet").parameter_groups(1e-4, 0.0)
    assert len(groups) == 2


def test_warmup_and_empty_branch_skip():
    method = _method(skip_empty_branch_step=True)
    _force_branch(method.head, 1)
    batch = {"image": torch.rand(9, 1, 28, 28), "label": torch.arange(9) % 3, "index": torch.arange(9)}
    method.training_loss(batch)["loss"].backward()
    method.epoch = 0
    method.before_optimizer_step()
    assert all(p.grad is None for p in method.backbone.parameters())  # warm-up: trunk does not step
    assert method.head.integrator.weight.grad is not None
    for k in (0, 2, 3):
        assert all(p.grad is None for p in method.objective.branch_losses[k].parameters())
    assert all(p.grad is not None for p in method.objective.branch_losses[1].parameters())
    method.zero_grad()
    method.training_loss(batch)["loss"].backward()
    method.epoch = 1
    method.before_optimizer_step()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())


def test_gradient_clipping_per_module():
    method = _method(grad_clip=1e-3, warmup_epochs=0)
    batch = {"image": torch.rand(9, 1, 28, 28), "label": torch.arange(9) % 3, "index": torch.arange(9)}
    method.training_loss(batch)["loss"].backward()
    method.before_optimizer_step()
    for module in (method.backbone, method.head, method.objective.final_loss):
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in module.parameters() if p.grad is not None))
        assert norm <= 1e-3 + 1e-6


def test_batch_sampler_choice_and_labels():
    import numpy as np

    from dmlkit.data.base import DMLDataset
    from dmlkit.data.samplers import MPerClassBatchSampler, RandomBatchSampler

    labels = np.repeat(np.arange(3), 8)
    data = DMLDataset(np.zeros((24, 1, 28, 28), np.uint8), labels)
    assert isinstance(_method().batch_sampler(data, 12, 0, 0), RandomBatchSampler)
    sampler = _method(base_loss="triplet").batch_sampler(data, 12, 0, 0)
    assert isinstance(sampler, MPerClassBatchSampler)
    for batch in sampler:
        counts = np.bincount(labels[batch], minlength=3)
        assert sorted(counts[counts > 0].tolist()) == [4, 4, 4]
    with pytest.raises(ValueError, match="samples_per_class"):
        _method(base_loss="triplet").batch_sampler(data, 18, 0, 0)
    few = _method(base_loss="triplet").batch_sampler(data, 24, 0, 0)  # 6 classes asked, 3 exist: 3 x 8
    assert (few.P, few.K) == (3, 8)


def test_bad_options_and_labels_raise():
    with pytest.raises(ValueError, match="base loss"):
        _method(base_loss="contrastive")
    with pytest.raises(ValueError, match="no option"):
        _method(lambda_embedding=3)
    with pytest.raises(ValueError, match="miner"):
        _method(base_loss="proxy_anchor", miner="hard")
    method = _method()
    batch = {"image": torch.rand(3, 1, 28, 28), "label": torch.tensor([0, -1, 1]), "index": torch.arange(3)}
    with pytest.raises(ValueError, match="labels"):
        method.training_loss(batch)


def test_refresh_maps_training_classes_to_proxy_rows():
    import numpy as np

    from dmlkit.data.base import DMLDataset
    from dmlkit.methods.base import RefreshContext

    method = _method()
    data = DMLDataset(np.zeros((6, 1, 28, 28), np.uint8), np.array([5, 7, 9, 5, 7, 9]))
    method.refresh(RefreshContext(epoch=3, train=data, embed=None, knn=None, device=torch.device("cpu")))
    assert method.epoch == 3
    assert method._class_ids(torch.tensor([9, 5, 7])).tolist() == [2, 0, 1]


def test_drml_is_registered():
    from dmlkit.methods import method_class
    from dmlkit.methods.drml import DRML

    assert method_class("drml") is DRML
    assert DRML.uses_labels == "all"
    assert math.isclose(DRML.Config().lambda_emb, 10.0)


def test_mlrc_mode_fold_models_give_128d_that_concatenate_to_norm_two():
    """MLRC mode (spec §7, §10.7): 4 x 32-d nodes per fold model; 4 fold models -> 512-d of norm 2."""
    from dmlkit.evaluation.metrics import evaluate
    from dmlkit.evaluation.protocols import concatenate_normalised, mlrc_aggregate

    images, labels = torch.rand(24, 1, 28, 28), torch.arange(24) % 4
    per_fold = []
    for fold in range(4):
        torch.manual_seed(fold)
        with torch.no_grad():
            per_fold.append(_method(node_dim=32).eval().embed(images))
    assert all(e.shape == (24, 128) for e in per_fold)
    joined = concatenate_normalised(per_fold)
    assert torch.allclose(joined.norm(dim=1), torch.full((24,), 2.0), atol=1e-5)
    out = mlrc_aggregate(per_fold, labels)
    for key in ("precision@1", "r_precision", "map@r"):
        separate = [evaluate(e, labels, (1,), nmi=False)[key] for e in per_fold]
        assert out["separated"][key] == pytest.approx(sum(separate) / 4)
        assert out["concatenated"][key] == pytest.approx(evaluate(joined, labels, (1,), nmi=False)[key])
        assert out["concatenated"][key] == pytest.approx(evaluate(joined / 2, labels, (1,), nmi=False)[key])


def test_presets_hold_valid_options():
    from pathlib import Path

    import yaml

    from dmlkit.methods.drml import Config

    presets = sorted((Path(__file__).resolve().parent.parent / "src/dmlkit/configs").glob("drml-*.yaml"))
    assert len(presets) >= 4
    for path in presets:
        data = yaml.safe_load(path.read_text())
        assert data["method"] == "drml"
        Config(**data.get("options", {}))  # unknown option names raise TypeError
