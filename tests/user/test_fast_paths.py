"""The stage-1 speed paths (issue 9) compute what the plain forms compute.

- ``LazyAdam`` against ``torch.optim.SparseAdam`` (bit-identical, several steps);
- the fused dense Adam of ``StageOneOptimizer`` against the for-loop ``torch.optim.Adam``,
  and its kernel choice surviving a resume from a state saved without it;
- ``bag_mean`` (EmbeddingBag forward, matmul backward) against ``nn.EmbeddingBag``;
- the sampled-softmax loss (one candidate lookup, element-wise row dots) against the
  previous formulation (two lookups, ``einsum``) on a fixed batch, values and gradients;
- ``ralm train user --help`` and ``import ralm.user.config`` without torch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ralm.user.config import UserTrainConfig
from ralm.user.feature_embedding import bag_mean
from ralm.user.optim import LazyAdam, StageOneOptimizer
from ralm.user.sampled_softmax import sampled_softmax_loss


def _sparse_grads(steps: int, n: int, d: int) -> list[torch.Tensor]:
    """Sparse (n, d) gradients with repeated rows (uncoalesced, as nn.Embedding makes)."""
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(steps):
        rows = torch.randint(0, n, (9,), generator=g)  # repeats -> coalesce sums them
        out.append(
            torch.sparse_coo_tensor(
                rows[None], torch.randn(9, d, generator=g), (n, d), check_invariants=True
            )
        )
    return out


@pytest.mark.parametrize("maximize", [False, True])
def test_lazy_adam_is_sparse_adam(maximize: bool) -> None:
    init = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    ours, ref = init.clone().requires_grad_(True), init.clone().requires_grad_(True)
    opt = LazyAdam([ours], lr=0.01, betas=(0.8, 0.9), maximize=maximize)
    ref_opt = torch.optim.SparseAdam([ref], lr=0.01, betas=(0.8, 0.9), maximize=maximize)
    for grad in _sparse_grads(6, 20, 4):
        ours.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        ref_opt.step()
        assert torch.equal(ours, ref)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[ours][key], ref_opt.state[ref][key])
    assert opt.state[ours]["step"] == ref_opt.state[ref]["step"] == 6
    untouched = torch.ones(20, dtype=torch.bool)
    for grad in _sparse_grads(6, 20, 4):
        untouched[grad.coalesce().indices()[0]] = False
    assert torch.equal(ours.detach()[untouched], init[untouched])  # lazy: rows never used


def test_lazy_adam_refuses_dense_gradients() -> None:
    p = torch.zeros(3, 2, requires_grad=True)
    p.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="sparse"):
        LazyAdam([p]).step()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 3))


def _fit(net: nn.Module, opt: object, steps: int) -> None:
    x = torch.tensor([1, 3, 3, 6])
    for _ in range(steps):
        loss = net(x).pow(2).sum()
        opt.zero_grad()  # type: ignore[attr-defined]
        loss.backward()
        opt.step()  # type: ignore[attr-defined]


def test_fused_dense_adam_equals_for_loop_adam_and_survives_resume() -> None:
    tc = UserTrainConfig(lr=0.01, weight_decay=0.001)
    ours, ref = _net(), _net()
    opt = StageOneOptimizer(ours, tc)
    assert opt.optimizers[0].param_groups[0]["fused"] is True
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01, weight_decay=0.001)
    _fit(ours, opt, 5)
    _fit(ref, ref_opt, 5)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # a state saved by the for-loop optimiser (fused None) resumes on the fused kernel
    resumed = StageOneOptimizer(_net(), tc)
    resumed.load_state_dict({"optimizers": [ref_opt.state_dict()]})
    assert resumed.optimizers[0].param_groups[0]["fused"] is True
    assert resumed.optimizers[0].param_groups[0]["lr"] == 0.01


def test_bag_mean_equals_embedding_bag_values_and_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    bag = nn.EmbeddingBag(11, 4, mode="mean")
    values = torch.tensor([3, 3, 0, 10, 5, 1, 2, 7, 7, 7])  # repeats and code 0 (OOV row)
    offsets = torch.tensor([0, 3, 3, 4, 9])  # bag 1 is empty, the last has one value
    w = torch.randn(11, 4, generator=g)
    with torch.no_grad():
        bag.weight.copy_(w)
    ref = bag(values, offsets)
    upstream = torch.randn(5, 4, generator=g)
    (ref * upstream).sum().backward()
    w2 = w.clone().requires_grad_(True)
    out = bag_mean(w2, values, offsets)
    (out * upstream).sum().backward()
    torch.testing.assert_close(out, ref)
    assert torch.all(out[1] == 0)  # empty bag -> zeros
    torch.testing.assert_close(w2.grad, bag.weight.grad)
    # naive reference of the gradient: every value gets upstream / bag length
    naive = torch.zeros(11, 4)
    ends = [*offsets.tolist()[1:], len(values)]
    for b, (s, e) in enumerate(zip(offsets.tolist(), ends, strict=True)):
        for v in values[s:e].tolist():
            naive[v] += upstream[b] / (e - s)
    torch.testing.assert_close(w2.grad, naive)


def _old_loss(
    user: torch.Tensor,
    table: nn.Embedding,
    pos: torch.Tensor,
    neg: torch.Tensor,
    pos_q: torch.Tensor,
    neg_q: torch.Tensor,
) -> torch.Tensor:
    """The loss as computed before issue 9: positive and negatives looked up separately,
    the negatives' logits by einsum, float64 log Q cast after the concatenation."""
    pos_logit = (user * table(pos)).sum(-1, keepdim=True)  # (B, 1)
    neg_logit = torch.einsum("bd,bkd->bk", user, table(neg))  # (B, K)
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    logits = logits - torch.cat([pos_q.reshape(-1, 1), neg_q], dim=1).to(logits.dtype)
    hit = neg == pos[:, None]
    logits = logits.masked_fill(torch.cat([torch.zeros_like(hit[:, :1]), hit], 1), -torch.inf)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long))


@pytest.mark.parametrize("sparse", [False, True])
def test_loss_equals_the_previous_formulation(sparse: bool) -> None:
    g = torch.Generator().manual_seed(4)
    b, n, d, k = 32, 50, 8, 6  # 7 draws per item: the gathered path
    user = torch.randn(b, d, generator=g, requires_grad=True)
    pos = torch.randint(0, n, (b,), generator=g)
    neg = torch.randint(0, n, (b, k), generator=g)
    neg[0, 2] = pos[0]  # an accidental hit
    log_q = torch.log(torch.softmax(torch.randn(n, generator=g, dtype=torch.float64), 0))
    tables = []
    for _ in range(2):
        torch.manual_seed(0)
        tables.append(nn.Embedding(n, d, sparse=sparse))
    ours = sampled_softmax_loss(
        user, tables[0], pos, neg, pos_log_q=log_q[pos].float(), neg_log_q=log_q[neg].float()
    )
    g_user, g_table = torch.autograd.grad(ours, (user, tables[0].weight))
    ref = _old_loss(user, tables[1], pos, neg, log_q[pos], log_q[neg])
    r_user, r_table = torch.autograd.grad(ref, (user, tables[1].weight))
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_user, r_user)
    if sparse:
        g_table, r_table = g_table.to_dense(), r_table.to_dense()
    torch.testing.assert_close(g_table, r_table)


def test_train_user_help_and_config_do_not_load_torch() -> None:
    code = (
        "import runpy, sys\n"
        "import ralm.user.config, ralm.training.config\n"
        "assert 'torch' not in sys.modules, 'config import loaded torch'\n"
        "sys.argv = ['ralm', 'train', 'user', '--help']\n"
        "try:\n"
        "    runpy.run_module('ralm', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--negatives" in out.stdout
    assert out.stdout.split()[-1] == "False"


def test_lazy_package_names_resolve() -> None:
    import ralm.training
    import ralm.user

    for name in ralm.user.__all__:
        assert getattr(ralm.user, name) is not None
    for name in ralm.training.__all__:
        assert getattr(ralm.training, name) is not None
    with pytest.raises(AttributeError):
        ralm.user.no_such_name  # noqa: B018


@pytest.mark.parametrize("sparse", [False, True])
def test_candidate_dots_equal_gathered_dots_values_and_gradients(sparse: bool) -> None:
    from ralm.user.sampled_softmax import candidate_dots

    g = torch.Generator().manual_seed(5)
    user = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    cand = torch.randint(0, 10, (7, 5), generator=g)  # repeats across and within rows
    upstream = torch.randn(7, 5, generator=g, dtype=torch.float64)
    out = candidate_dots(user, weight, cand, sparse=sparse)
    g_user, g_weight = torch.autograd.grad(out, (user, weight), upstream)
    ref = (user[:, None, :] * weight[cand]).sum(-1)  # independent: explicit gather
    r_user, r_weight = torch.autograd.grad(ref, (user, weight), upstream)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g_user, r_user)
    if sparse:
        assert g_weight.is_sparse and g_weight.is_coalesced()
        assert set(g_weight.indices()[0].tolist()) == set(cand.ravel().tolist())
        g_weight = g_weight.to_dense()
    torch.testing.assert_close(g_weight, r_weight)
