"""Sampled softmax vs the full softmax cross-entropy, accidental hits, log-Q."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ralm.errors import ConfigError
from ralm.user.sampled_softmax import sampled_softmax_loss


def _setup(b: int = 6, n: int = 13, d: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    user = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    table = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randint(0, n, (b,), generator=g)
    return user, table, pos


def test_equals_full_softmax_when_all_items_sampled() -> None:
    user, table, pos = _setup()
    neg = torch.arange(table.shape[0])  # every item, shared; the positive is masked as a hit
    loss = sampled_softmax_loss(user, table, pos, neg)
    g_user, g_table = torch.autograd.grad(loss, (user, table))
    ref = F.cross_entropy(user @ table.T, pos)  # independent full softmax
    r_user, r_table = torch.autograd.grad(ref, (user, table))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(g_user, r_user)
    torch.testing.assert_close(g_table, r_table)


def test_per_row_shared_and_gathered_forms_agree() -> None:
    user, table, pos = _setup()
    neg = torch.tensor([1, 4, 7])
    shared = sampled_softmax_loss(user, table, pos, neg)
    per_row = sampled_softmax_loss(user, table, pos, neg.expand(len(pos), -1))
    cand = torch.cat([pos[:, None], neg.expand(len(pos), -1)], 1)  # (B, 1+K)
    gathered = sampled_softmax_loss(user, table[cand], pos, neg.expand(len(pos), -1))
    torch.testing.assert_close(shared, per_row)
    torch.testing.assert_close(shared, gathered)


def test_accidental_hits_are_dropped() -> None:
    user, table, _ = _setup(b=1)
    pos = torch.tensor([3])
    with_hit = sampled_softmax_loss(user, table, pos, torch.tensor([[3, 5, 3, 8]]))
    ref = sampled_softmax_loss(user, table, pos, torch.tensor([[5, 8]]))
    torch.testing.assert_close(with_hit, ref)
    kept = sampled_softmax_loss(
        user, table, pos, torch.tensor([[3, 5, 3, 8]]), remove_accidental_hits=False
    )
    assert kept.item() > ref.item()  # the positive competes against itself
    # all negatives are hits: loss 0, finite gradient
    zero = sampled_softmax_loss(user, table, pos, torch.tensor([[3, 3]]))
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(user.grad).all()  # type: ignore[arg-type]


def test_logq_subtracts_log_probability() -> None:
    user, table, pos = _setup()
    neg = torch.randint(
        0, table.shape[0], (len(pos), 4), generator=torch.Generator().manual_seed(3)
    )
    log_q = torch.log(torch.linspace(0.01, 0.3, table.shape[0], dtype=torch.float64))
    got = sampled_softmax_loss(
        user,
        table,
        pos,
        neg,
        pos_log_q=log_q[pos],
        neg_log_q=log_q[neg],
        remove_accidental_hits=False,
    )
    logits = torch.cat(
        [(user * table[pos]).sum(1, keepdim=True), torch.einsum("bd,bkd->bk", user, table[neg])], 1
    )
    logits = logits - torch.cat([log_q[pos][:, None], log_q[neg]], 1)
    ref = F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long))
    torch.testing.assert_close(got, ref)
    with pytest.raises(ConfigError):
        sampled_softmax_loss(user, table, pos, neg, pos_log_q=log_q[pos])


@pytest.mark.parametrize("k", [2, 40])  # 40 negatives on 13 items: the distinct-items matmul
@pytest.mark.parametrize("module", [False, True])
def test_many_repeated_negatives_give_the_gathered_loss_and_gradients(k: int, module: bool) -> None:
    from ralm.user.sampled_softmax import UNIQUE_RATIO, sampled_logits

    user, table, pos = _setup()
    g = torch.Generator().manual_seed(1)
    neg = torch.randint(0, table.shape[0], (len(pos), k), generator=g)  # (B, K) repeats
    uses_unique = (len(pos) * (k + 1)) >= UNIQUE_RATIO * torch.cat(
        [pos, neg.ravel()]
    ).unique().numel()
    assert uses_unique == (k == 40)
    items: torch.Tensor | torch.nn.Embedding = table
    params = [user, table]
    if module:
        items = torch.nn.Embedding.from_pretrained(table.detach().clone(), freeze=False)
        params = [user, items.weight]
    loss = sampled_softmax_loss(user, items, pos, neg)
    grads = torch.autograd.grad(loss, params)
    # independent reference: explicit per-row gather of the candidate vectors
    t_ref = table.detach().clone().requires_grad_(True)
    u_ref = user.detach().clone().requires_grad_(True)
    cand = torch.cat([pos[:, None], neg], 1)  # (B, 1+K)
    logits = (u_ref[:, None, :] * t_ref[cand]).sum(-1)  # (B, 1+K)
    logits = logits.masked_fill(
        torch.cat([torch.zeros_like(pos[:, None]), neg], 1).eq(pos[:, None])
        & (torch.arange(k + 1) > 0),
        float("-inf"),
    )
    ref = F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long))
    r_grads = torch.autograd.grad(ref, (u_ref, t_ref))
    torch.testing.assert_close(loss, ref)
    for a, b in zip(grads, r_grads, strict=True):
        torch.testing.assert_close(a, b)
    raw = sampled_logits(user, items, pos, neg)
    torch.testing.assert_close(raw, (user[:, None, :] * table[cand]).sum(-1))
