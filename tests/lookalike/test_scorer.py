"""The vectorised scorer against a naive per-(user, item) loop that materialises E_local."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ralm.lookalike.attention import masked_softmax
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.scorer import gram_matrix


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return 0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb)


def naive_scores(model: LookalikeModel, e_u, cent, mask, glob, sizes) -> np.ndarray:
    """Paper formulas, one (user, item) at a time, only the valid centroids."""
    cfg = model.config
    w_l = model.local_attention.weight
    out = np.zeros((e_u.shape[0], cent.shape[0]))
    for b in range(e_u.shape[0]):
        for i in range(cent.shape[0]):
            c = cent[i][mask[i]]  # (n_valid, h)
            if c.shape[0] == 0:
                local = torch.zeros(cent.shape[2])
            else:
                logits = torch.tanh(e_u[b] @ w_l @ c.T)  # (n_valid,)
                if cfg.size_prior:  # a centroid of n seeds weighs like n seeds
                    logits = logits + torch.log(sizes[i][mask[i]].double()).float()
                a = torch.softmax(logits, dim=0)  # (n_valid,)
                local = a @ c  # (h,) materialised E_local
            s = 0.0
            if cfg.use_global:
                s += cfg.alpha * _cos(e_u[b], glob[i])
            if cfg.use_local:
                s += cfg.beta * _cos(e_u[b], local)
            if cfg.seed_prior:  # audience-size prior: gamma * log(1 + seeds of the item)
                gamma = float(np.log1p(np.exp(float(model.prior_weight))))
                s += gamma * float(np.log1p(float(sizes[i][mask[i]].sum())))
            out[b, i] = s
    return out


def _inputs(seed: int = 0, n_b: int = 5, n_i: int = 9, k: int = 6, h: int = 8):
    g = torch.Generator().manual_seed(seed)
    e_u = torch.relu(torch.randn(n_b, h, generator=g))
    cent = torch.relu(torch.randn(n_i, k, h, generator=g))
    n_valid = torch.tensor([k, k, 3, 1, 0, k, 2, 5, k])[:n_i]
    mask = torch.arange(k)[None, :] < n_valid[:, None]  # (I, k)
    cent = cent * mask[..., None]
    cent[2, 4] = 7.0  # garbage in a masked slot must not matter
    sizes = torch.randint(1, 50, (n_i, k), generator=g) * mask
    return e_u, cent, mask, sizes


@pytest.mark.parametrize(
    "switches",
    [
        dict(),
        dict(size_prior=False),
        dict(use_global=False),
        dict(use_local=False),
        dict(alpha=0.5, beta=0.2),
        dict(seed_prior=False),
    ],
)
def test_batched_matches_naive_loop(switches: dict) -> None:
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6, **switches))
    with torch.no_grad():
        model.prior_weight.fill_(-1.0)  # gamma = softplus(-1) ~ 0.31, a visible prior
    e_u, cent, mask, sizes = _inputs()
    with torch.no_grad():
        glob = model.item_global(cent, mask, sizes)
        fast = model.score(e_u, cent, mask, glob, sizes=sizes, chunk_items=4).numpy()
        ref = naive_scores(model, e_u, cent, mask, glob, sizes)
    np.testing.assert_allclose(fast, ref, atol=1e-5)
    assert fast.shape == (5, 9)
    if not model.config.seed_prior:
        assert np.all(np.abs(fast) <= 1.0 + 1e-6)  # the paper's score is in [-1, 1]
    assert np.allclose(fast[:, 4], 0.0)  # no seeds at all -> both cosines and prior are 0


def test_pairs_equal_matrix_diagonal_and_precomputed_gram() -> None:
    torch.manual_seed(1)
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6))
    e_u, cent, mask, n = _inputs(n_b=9)
    with torch.no_grad():
        glob = model.item_global(cent, mask, n)
        full = model.score(e_u, cent, mask, glob, sizes=n)
        with_gram = model.score(e_u, cent, mask, glob, gram_matrix(cent), n, chunk_items=1)
        pairs = model.score_pairs(e_u, cent, mask, sizes=n)  # row b = user b x item b
    np.testing.assert_allclose(with_gram.numpy(), full.numpy(), atol=1e-6)
    np.testing.assert_allclose(pairs.numpy(), torch.diagonal(full).numpy(), atol=1e-6)


def test_masked_softmax_all_masked_rows_are_zero_with_finite_grads() -> None:
    logits = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    w = masked_softmax(logits, mask)
    assert torch.allclose(w.sum(-1), torch.tensor([1.0, 0.0, 1.0]))
    assert torch.all(w[~mask] == 0)
    w.pow(2).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_score_gradients_are_finite_with_empty_items() -> None:
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6))
    _, cent, mask, sizes = _inputs(n_b=9)
    s = model.score_pairs(model.transform(torch.randn(9, 8)), cent, mask, sizes=sizes)
    model.logit(s).sum().backward()
    for name, p in model.named_parameters():
        if name == "log_inv_temp":  # only the softmax loss uses the temperature
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_size_prior_requires_sizes() -> None:
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6))
    _, cent, mask, _ = _inputs()
    with pytest.raises(ValueError, match="pass sizes"):
        model.item_global(cent, mask)


def test_size_prior_with_unit_sizes_is_the_paper_formula() -> None:
    torch.manual_seed(2)
    with_prior = LookalikeModel(LookalikeConfig(m=8, h=8, k=6, seed_prior=False))
    plain = LookalikeModel(LookalikeConfig(m=8, h=8, k=6, size_prior=False, seed_prior=False))
    plain.load_state_dict(with_prior.state_dict())
    e_u, cent, mask, _ = _inputs()
    ones = mask.long()
    with torch.no_grad():
        a = with_prior.score(e_u, cent, mask, with_prior.item_global(cent, mask, ones), sizes=ones)
        b = plain.score(e_u, cent, mask, plain.item_global(cent, mask))
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_seed_prior_adds_gamma_log_seed_count_and_matches_pairs() -> None:
    torch.manual_seed(3)
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6))
    paper = LookalikeModel(LookalikeConfig(m=8, h=8, k=6, seed_prior=False))
    paper.load_state_dict(model.state_dict())
    e_u, cent, mask, _ = _inputs()
    sizes = torch.randint(1, 50, mask.shape) * mask.long()  # (I, k)
    with torch.no_grad():
        model.prior_weight.fill_(float(np.log(np.expm1(0.25))))  # gamma = 0.25
        g = model.item_global(cent, mask, sizes)
        s = model.score(e_u, cent, mask, g, sizes=sizes)  # (B, I)
        ref = paper.score(e_u, cent, mask, g, sizes=sizes)
        expect = ref + 0.25 * torch.log1p(sizes.sum(-1).float())[None, :]
        torch.testing.assert_close(s, expect, atol=1e-6, rtol=1e-6)
        # the paired form (training) gives the same numbers as the matrix form (serving)
        b, i = torch.meshgrid(
            torch.arange(e_u.shape[0]), torch.arange(cent.shape[0]), indexing="ij"
        )
        b, i = b.reshape(-1), i.reshape(-1)
        pairs = model.score_pairs(e_u[b], cent[i], mask[i], g[i], sizes=sizes[i])
        torch.testing.assert_close(pairs, s.reshape(-1), atol=1e-5, rtol=1e-5)


def test_seed_prior_ranks_larger_audience_first_for_equal_similarity() -> None:
    torch.manual_seed(4)
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6))
    e_u, cent, _, _ = _inputs()
    cent2 = torch.stack([cent[0], cent[0]])  # two items with identical centroids
    mask2 = torch.ones(2, cent.shape[1], dtype=torch.bool)
    sizes = torch.stack([mask2[0].long(), mask2[0].long() * 40])  # 40x the audience
    with torch.no_grad():
        model.prior_weight.fill_(0.0)  # gamma = log 2
        s = model.score(e_u, cent2, mask2, model.item_global(cent2, mask2, sizes), sizes=sizes)
    # the size prior inside attention leaves similarity unchanged for uniform scaling, so
    # only the audience-size prior separates the two items
    assert bool((s[:, 1] > s[:, 0]).all())
    with pytest.raises(ValueError, match="pass sizes"):
        model.score(e_u, cent2, mask2, model.item_global(cent2, mask2, sizes))


@pytest.mark.parametrize("chain", ["off", "on"])  # the torch chain, the compiled one
@pytest.mark.parametrize("switches", [dict(), dict(size_prior=False, seed_prior=False)])
def test_prepared_terms_match_naive_loop_and_are_reusable(
    switches: dict, chain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RALM_SCORER_KERNEL", chain)
    torch.manual_seed(5)
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6, **switches))
    with torch.no_grad():
        model.prior_weight.fill_(-1.0)
    e_u, cent, mask, sizes = _inputs(n_b=7)
    with torch.no_grad():
        glob = model.item_global(cent, mask, sizes)
        terms = model.prepare_items(cent, mask, glob, sizes=sizes)
        ref = naive_scores(model, e_u, cent, mask, glob, sizes)
        for chunk in (1, 4, 100):  # chunk boundaries do not change any score
            s = model.score_prepared(e_u, terms, chunk_items=chunk)
            np.testing.assert_allclose(s.numpy(), ref, atol=1e-5)
        # the same terms serve another batch of users (nothing was modified in place)
        s1 = model.score_prepared(e_u[:1], terms)
    np.testing.assert_allclose(s1.numpy(), ref[:1], atol=1e-5)
    assert s.shape == (7, 9) and s.is_contiguous()
    # the per-item constants: mask and size prior folded into the slot weights
    expect_w = mask.float() * (sizes.clamp(min=1).float() if model.config.size_prior else 1)
    torch.testing.assert_close(terms.weight[..., 0], expect_w)
    torch.testing.assert_close(terms.global_norm2, (glob * glob).sum(-1))


def test_bfloat16_table_stays_close_to_float32() -> None:
    torch.manual_seed(6)
    model = LookalikeModel(LookalikeConfig(m=16, h=16, k=5))
    g = torch.Generator().manual_seed(6)
    e_u = torch.relu(torch.randn(16, 16, generator=g))
    cent = torch.relu(torch.randn(300, 5, 16, generator=g))
    mask = torch.ones(300, 5, dtype=torch.bool)
    sizes = torch.randint(1, 60, (300, 5), generator=g)
    with torch.no_grad():
        glob = model.item_global(cent, mask, sizes)
        ref = model.score(e_u, cent, mask, glob, sizes=sizes)
        terms = model.prepare_items(cent, mask, glob, sizes=sizes, dtype="bfloat16")
        half = model.score_prepared(e_u, terms, chunk_items=64)
    assert terms.table.dtype == torch.bfloat16
    err = (half - ref).abs().max().item()
    assert 0 < err < 0.01  # bfloat16 has an 8-bit mantissa: visible, small
    top_ref, top_half = ref.topk(20).indices, half.topk(20).indices
    overlap = np.mean(
        [np.intersect1d(a, b).size / 20 for a, b in zip(top_ref, top_half, strict=True)]
    )
    assert overlap > 0.8
    with pytest.raises(ValueError, match="dtype"):
        model.prepare_items(cent, mask, glob, sizes=sizes, dtype="float16")


@pytest.mark.parametrize("chain", ["off", "on"])
@pytest.mark.parametrize("n_b", [1, 3, 16, 23, 24, 33])
def test_prepared_layouts_match_naive_loop(
    n_b: int, chain: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch chain's two layouts (rows of users for 2 <= B < 24, rows of slots else)
    and both forms of its Gram term (u^T G below 16 users, G u from 16 on), and the
    compiled chain, against the naive loop."""
    monkeypatch.setenv("RALM_SCORER_KERNEL", chain)
    torch.manual_seed(7)
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6))
    with torch.no_grad():
        model.prior_weight.fill_(-1.0)
    _, cent, mask, sizes = _inputs()
    e_u = torch.relu(torch.randn(n_b, 8))
    e_u[0] = 0.0  # a zero user: every cosine is 0 (the prior stays)
    with torch.no_grad():
        glob = model.item_global(cent, mask, sizes)
        terms = model.prepare_items(cent, mask, glob, sizes=sizes)
        ref = naive_scores(model, e_u, cent, mask, glob, sizes)
        for chunk in (1, 2, 1024):
            s = model.score_prepared(e_u, terms, chunk_items=chunk)
            np.testing.assert_allclose(s.numpy(), ref, atol=1e-5)


def test_tiles_and_per_thread_buffers_do_not_leak_between_calls() -> None:
    """Buffers are reused across calls (bigger batch, then smaller) and never shared
    between threads: interleaved calls of different shapes give the single-call scores."""
    import threading

    from ralm.lookalike.scorer import TILE_ELEMENTS, tile_items

    assert tile_items(1, 20, 1024) == 1024  # bounded by chunk_items
    assert tile_items(32, 20, 1024) * 20 * 32 <= TILE_ELEMENTS  # stays in cache
    assert tile_items(10_000, 20, 1024) >= 1
    torch.manual_seed(8)
    model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6))
    e_u, cent, mask, sizes = _inputs(n_b=24)
    with torch.no_grad():
        glob = model.item_global(cent, mask, sizes)
        terms = model.prepare_items(cent, mask, glob, sizes=sizes)
        alone = [model.score_prepared(e_u[:b], terms).clone() for b in (24, 2, 17)]
        errors: list[float] = []

        def worker() -> None:
            for _ in range(20):
                for b, ref in zip((24, 2, 17), alone, strict=True):
                    got = model.score_prepared(e_u[:b], terms, chunk_items=3)
                    errors.append(float((got - ref).abs().max()))

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(errors) == 180 and max(errors) < 1e-6


def test_prepared_local_only_and_global_only_match_naive_loop() -> None:
    torch.manual_seed(9)
    for switches in (dict(use_global=False), dict(use_local=False)):
        model = LookalikeModel(LookalikeConfig(m=8, h=8, k=6, seed_prior=False, **switches))
        e_u, cent, mask, sizes = _inputs(n_b=18)
        with torch.no_grad():
            glob = model.item_global(cent, mask, sizes)
            terms = model.prepare_items(cent, mask, glob, sizes=sizes, dtype="bfloat16")
            half = model.score_prepared(e_u, terms)
            ref = naive_scores(model, e_u, cent, mask, glob, sizes)
        np.testing.assert_allclose(half.numpy(), ref, atol=0.02)  # bfloat16 table
