"""The training-path formulas against their previous forms: same values and gradients.

``score_matrix_train``'s local cosine is one autograd function (``local_cos``: the
softmax shifted per item and unnormalised, ``G w`` one bmm per item, a hand-written
backward), ``score_pairs`` the norm of E_local itself, the attention's tanh is
``2 sigmoid(2x) - 1``, the masked softmax one autograd function, the global attention's
logits ``sigmoid(2 x W_g^T) . 2v`` (its tanh logits shifted by a constant) and the global
pooling a bmm: the same math as the forms below (the code before), which round
differently. Values and gradients must agree to float tolerance, in float64 and float32,
and the new forms pass ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import pytest
import torch

from ralm.lookalike.attention import GlobalAttention, masked_softmax, tanh
from ralm.lookalike.scorer_math import (
    combine,
    gram_matrix,
    local_cos,
    safe_cos,
    score_matrix_train,
    score_pairs,
)

# float64: rounding only (1e-16 scale); float32: ~1e-7 relative per op, a few ops deep
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def old_masked_softmax(logits, mask, log_prior=None):  # type: ignore[no-untyped-def]
    if log_prior is not None:
        logits = logits + log_prior
    mask = mask.expand_as(logits)
    any_valid = mask.any(dim=-1, keepdim=True)
    w = torch.softmax(logits.masked_fill(~(mask | ~any_valid), float("-inf")), dim=-1)
    return w * any_valid.to(w.dtype)


def old_local_cos(att, dots, mask, gram, u_norm2, log_prior=None):  # type: ignore[no-untyped-def]
    w = old_masked_softmax(torch.tanh(att), mask, log_prior)
    num = (w * dots).sum(dim=-1)
    gw = torch.matmul(gram, w.unsqueeze(-1)).squeeze(-1)  # broadcast: gram copied per user
    return safe_cos(num, u_norm2, (w * gw).sum(dim=-1))


def old_score_matrix_train(e_u, w_local, cent, mask, gv, alpha, beta, gram=None, lp=None):  # type: ignore[no-untyped-def]
    n_b, h = e_u.shape
    n_i, k, _ = cent.shape
    u_norm2 = (e_u * e_u).sum(dim=-1)
    cg = safe_cos(e_u @ gv.T, u_norm2[:, None], (gv * gv).sum(dim=-1)[None, :])
    both = torch.cat([e_u @ w_local, e_u], dim=0)
    r = (cent.reshape(-1, h) @ both.T).reshape(n_i, k, 2 * n_b).permute(2, 0, 1)
    gm = gram_matrix(cent) if gram is None else gram
    cl = old_local_cos(
        r[:n_b], r[n_b:], mask[None], gm, u_norm2[:, None], None if lp is None else lp[None]
    )
    return combine(cg, cl, alpha, beta)


def old_score_pairs(e_u, w_local, cent, mask, gv, alpha, beta, lp=None):  # type: ignore[no-untyped-def]
    u_norm2 = (e_u * e_u).sum(dim=-1)
    cg = safe_cos((e_u * gv).sum(dim=-1), u_norm2, (gv * gv).sum(dim=-1))
    att = torch.einsum("bh,bkh->bk", e_u @ w_local, cent)
    dots = torch.einsum("bh,bkh->bk", e_u, cent)
    cl = old_local_cos(att, dots, mask, gram_matrix(cent), u_norm2, lp)
    return combine(cg, cl, alpha, beta)


def old_global(att: GlobalAttention, cent, mask, lp):  # type: ignore[no-untyped-def]
    g = old_masked_softmax(torch.tanh(att.w_g(cent)) @ att.v, mask, lp)
    return (g.unsqueeze(-1) * cent).sum(dim=-2)


def _inputs(dtype: torch.dtype, n_b: int = 7, n_i: int = 11, k: int = 6, h: int = 8, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    n_valid = torch.randint(0, k + 1, (n_i,), generator=g)
    n_valid[:3] = torch.tensor([k, 0, 1])  # a full item, one without seeds, one seed
    mask = torch.arange(k)[None, :] < n_valid[:, None]  # (I, k)
    cent = torch.relu(rnd(n_i, k, h)) * mask[..., None]
    lp = torch.log1p(torch.rand(n_i, k, generator=g, dtype=torch.float64).to(dtype) * 9) * mask
    leaves = {
        "e_u": rnd(n_b, h),
        "w_local": rnd(h, h) / h**0.5,
        "cent": cent,
        "gv": rnd(n_i, h),
        "lp": lp,
    }
    return {n: t.requires_grad_() for n, t in leaves.items()}, mask


def _compare(
    new: torch.Tensor, old: torch.Tensor, leaves: dict[str, torch.Tensor], tol: float
) -> None:
    torch.testing.assert_close(new, old, atol=tol, rtol=tol)
    names = [n for n, t in leaves.items() if t.requires_grad]
    weight = torch.randn(new.shape, generator=torch.Generator().manual_seed(1), dtype=new.dtype)
    g_new = torch.autograd.grad(
        (new * weight).sum(), [leaves[n] for n in names], allow_unused=True, retain_graph=True
    )
    g_old = torch.autograd.grad((old * weight).sum(), [leaves[n] for n in names], allow_unused=True)
    for name, a, b in zip(names, g_new, g_old, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            scale = float(b.abs().max()) or 1.0  # relative to the gradient's size
            torch.testing.assert_close(a / scale, b / scale, atol=tol, rtol=0, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_gram", [False, True])
def test_score_matrix_train_matches_previous_formula(dtype: torch.dtype, with_gram: bool) -> None:
    leaves, mask = _inputs(dtype)
    e_u, w_l, cent, gv, lp = (leaves[n] for n in ("e_u", "w_local", "cent", "gv", "lp"))
    gram = gram_matrix(cent) if with_gram else None
    new = score_matrix_train(
        e_u, w_l, cent, mask, gv, 0.3, 0.7, gram=gram, log_prior=lp, chunk_items=4
    )
    old = torch.cat(
        [
            old_score_matrix_train(
                e_u,
                w_l,
                cent[lo : lo + 4],
                mask[lo : lo + 4],
                gv[lo : lo + 4],
                0.3,
                0.7,
                None if gram is None else gram[lo : lo + 4],
                lp[lo : lo + 4],
            )
            for lo in range(0, cent.shape[0], 4)
        ],
        dim=1,
    )
    local = score_matrix_train(e_u, w_l, cent, mask, gv, use_global=False, gram=gram)
    assert torch.all(local[:, 1] == 0)  # no seeds: local cosine exactly 0
    none = score_matrix_train(e_u[:0], w_l, cent, mask, gv, gram=gram)  # no users (no clicks)
    assert none.shape == (0, cent.shape[0])
    _compare(new, old, leaves, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_score_pairs_matches_previous_formula(dtype: torch.dtype) -> None:
    leaves, mask = _inputs(dtype, n_b=11)
    e_u, w_l, cent, gv, lp = (leaves[n] for n in ("e_u", "w_local", "cent", "gv", "lp"))
    new = score_pairs(e_u, w_l, cent, mask, gv, 0.3, 0.7, log_prior=lp)
    old = old_score_pairs(e_u, w_l, cent, mask, gv, 0.3, 0.7, lp)
    _compare(new, old, leaves, TOL[dtype])
    # each switched off in turn, and without a prior
    for use_local, use_global in ((True, False), (False, True)):
        got = score_pairs(e_u, w_l, cent, mask, gv, 1.0, 1.0, use_local, use_global)
        want = old_score_pairs(e_u, w_l, cent, mask, gv, float(use_global), float(use_local))
        torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_global_attention_matches_previous_formula(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    att = GlobalAttention(8).to(dtype)
    leaves, mask = _inputs(dtype)
    cent, lp = leaves["cent"], leaves["lp"]
    params = {"cent": cent, "lp": lp, "w_g": att.w_g.weight, "v": att.v}
    _compare(att(cent, mask, lp), old_global(att, cent, mask, lp), params, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_softmax_matches_previous_formula(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(5, 6, generator=g) < 0.5
    mask[0], mask[1] = False, True  # a row without valid slots, a full row
    cases = [((5, 6), mask, (5, 6)), ((3, 5, 6), mask[None], (1, 5, 6)), ((3, 5, 6), mask, None)]
    cases.append(((1, 5, 6), mask.expand(3, 5, 6), (3, 5, 6)))  # a mask wider than the logits
    for lg_shape, m, lp_shape in cases:
        x = torch.randn(*lg_shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        leaves = {"x": x}
        lp = None
        if lp_shape is not None:
            lp = torch.randn(*lp_shape, generator=g, dtype=torch.float64).to(dtype)
            leaves["lp"] = lp.requires_grad_()
        new, old = masked_softmax(x, m, lp), old_masked_softmax(x, m, lp)
        assert new.shape == old.shape
        _compare(new, old, leaves, TOL[dtype])
    x = torch.randn(4, 5, 6, dtype=torch.float64, requires_grad=True)
    lp = torch.randn(1, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: masked_softmax(a, mask, b), (x, lp))


def test_tanh_matches_torch_tanh() -> None:
    x = torch.cat([torch.linspace(-30, 30, 20001), torch.tensor([0.0, 1e-30, -1e-30])])
    for dtype, tol in ((torch.float32, 2.5e-7), (torch.float64, 1e-15)):
        xd = x.to(dtype).requires_grad_()
        y = tanh(xd)
        torch.testing.assert_close(y, torch.tanh(xd), atol=tol, rtol=0)
        (g,) = torch.autograd.grad(y.sum(), xd)
        torch.testing.assert_close(g, 1 - torch.tanh(xd.detach()) ** 2, atol=4 * tol, rtol=0)
    assert torch.equal(tanh(torch.tensor([float("inf"), -float("inf")])), torch.tensor([1.0, -1.0]))
    assert torch.autograd.gradcheck(
        tanh, (torch.randn(20, dtype=torch.float64, requires_grad=True),)
    )


def test_new_forms_pass_gradcheck() -> None:
    leaves, mask = _inputs(torch.float64, n_b=3, n_i=4, k=3, h=4)
    e_u, w_l, cent, gv, lp = (leaves[n] for n in ("e_u", "w_local", "cent", "gv", "lp"))
    assert torch.autograd.gradcheck(
        lambda *a: score_matrix_train(*a[:2], a[2], mask, a[3], log_prior=a[4], chunk_items=2),
        (e_u, w_l, cent, gv, lp),
    )
    n = e_u.shape[0]
    assert torch.autograd.gradcheck(
        lambda *a: score_pairs(*a[:2], a[2], mask[:n], a[3], log_prior=a[4]),
        (e_u, w_l, cent[:n], gv[:n], lp[:n]),
    )


def _local_inputs(dtype: torch.dtype, n_b: int = 5, n_i: int = 6, k: int = 4, seed: int = 3):  # type: ignore[no-untyped-def]
    """Random (att, dots) with per-item Gram matrices: a full item, one without seeds, one
    whose only valid centroid is 0 (``w^T G w = 0``: the clamp), the rest partial."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_i, k, generator=g) < 0.6
    mask[0], mask[1], mask[2] = True, False, False
    mask[2, 0] = True
    cent = torch.randn(n_i, k, 3, generator=g, dtype=torch.float64) * mask[..., None]
    cent[2] = 0.0
    leaves = {
        "att": torch.randn(n_b, n_i, k, generator=g, dtype=torch.float64) * 2,
        "dots": torch.randn(n_b, n_i, k, generator=g, dtype=torch.float64) * (cent != 0).any(-1),
        "gram": gram_matrix(cent),
        "u2": torch.rand(n_b, 1, generator=g, dtype=torch.float64) + 0.1,
        "lp": torch.log1p(torch.rand(n_i, k, generator=g, dtype=torch.float64) * 9) * mask,
    }
    return {n: t.to(dtype).requires_grad_() for n, t in leaves.items()}, mask


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_prior", [False, True])
def test_local_cos_matches_previous_formula(dtype: torch.dtype, with_prior: bool) -> None:
    leaves, mask = _local_inputs(dtype)
    att, dots, gram, u2 = (leaves[n] for n in ("att", "dots", "gram", "u2"))
    lp = leaves["lp"] if with_prior else None
    if not with_prior:
        del leaves["lp"]
    new = local_cos(torch.stack([2.0 * att, dots]), mask, gram, u2, lp)
    old = old_local_cos(att, dots, mask[None], gram, u2, None if lp is None else lp[None])
    assert torch.all(new[:, 1] == 0) and torch.all(new[:, 2] == 0)  # no seeds / zero norm
    _compare(new, old, leaves, TOL[dtype])
    # a second backward through the same graph (retain_graph) gives the same gradients
    (a,) = torch.autograd.grad(new.sum(), [att], retain_graph=True)
    (b,) = torch.autograd.grad(new.sum(), [att])
    assert torch.equal(a, b)


def test_local_cos_passes_gradcheck() -> None:
    leaves, mask = _local_inputs(torch.float64)
    mask[2] = False  # gradcheck's steps would cross the clamp at w^T G w = 0
    att, dots, gram, u2, lp = (leaves[n] for n in ("att", "dots", "gram", "u2", "lp"))
    fn = lambda a, d, g, u, p: local_cos(torch.stack([2.0 * a, d]), mask, g, u, p)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (att, dots, gram, u2, lp))
    assert torch.autograd.gradcheck(lambda a, d: fn(a, d, gram, u2, None), (att, dots))


def test_global_attention_passes_gradcheck() -> None:
    torch.manual_seed(0)
    att = GlobalAttention(4).to(torch.float64)
    leaves, mask = _inputs(torch.float64, n_i=4, k=3, h=4)
    cent, lp = leaves["cent"], leaves["lp"]
    assert torch.autograd.gradcheck(
        lambda c, p, w, v: torch.func.functional_call(att, {"w_g.weight": w, "v": v}, (c, mask, p)),
        (cent, lp, att.w_g.weight, att.v),
    )
