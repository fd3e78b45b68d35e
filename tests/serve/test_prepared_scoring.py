"""Serving scores from per-chunk prepared terms: equal to the plain scorer, cached per chunk."""

from __future__ import annotations

import numpy as np
import torch

from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_index import IndexUpdate, SeedIndex
from ralm.serve.scoring import ScoreRequest, chunk_terms, score_batch


def _index(n: int, k: int, h: int, model: LookalikeModel, seed: int = 0) -> IndexUpdate:
    rng = np.random.default_rng(seed)
    cen = np.abs(rng.normal(size=(n, k, h))).astype(np.float32)
    mask = rng.random((n, k)) < 0.8
    mask[:, 0] = True
    cen[~mask] = 0.0
    sizes = np.where(mask, rng.integers(1, 9, (n, k)), 0).astype(np.int64)
    with torch.no_grad():
        glb = model.item_global(
            torch.from_numpy(cen), torch.from_numpy(mask), torch.from_numpy(sizes)
        ).numpy()
    return IndexUpdate(
        item_ids=np.asarray([f"i{j}" for j in range(n)]),
        centroids=cen,
        mask=mask,
        sizes=sizes,
        global_vec=glb,
        gram=np.einsum("ikh,ijh->ikj", cen, cen).astype(np.float32),
        n_seeds=sizes.sum(1),
        servable=rng.random(n) < 0.9,
        clustered_at=np.zeros(n),
    )


def _model(h: int) -> LookalikeModel:
    torch.manual_seed(0)
    m = LookalikeModel(LookalikeConfig(m=h, h=h, k=4, seed_prior=True)).eval()
    with torch.no_grad():
        m.prior_weight.fill_(0.0)  # a visible audience prior
    return m


def test_prepared_scores_equal_the_plain_scorer_on_servable_rows() -> None:
    h, k = 8, 4
    model = _model(h)
    upd = _index(50, k, h, model)
    snap = SeedIndex.empty(k, h, chunk_items=16).updated(upd)  # 4 chunks
    users = np.random.default_rng(1).normal(size=(3, h)).astype(np.float32)
    reqs = [ScoreRequest(u, 50) for u in users]
    got = score_batch(model, snap, reqs)
    with torch.no_grad():
        e_u = model.transform(torch.from_numpy(users))
        ref = model.score(
            e_u,
            torch.from_numpy(upd.centroids),
            torch.from_numpy(upd.mask),
            torch.from_numpy(upd.global_vec),
            sizes=torch.from_numpy(upd.sizes),
        ).numpy()  # (B, I)
    servable = np.flatnonzero(upd.servable)
    for b, res in enumerate(got):
        order = servable[np.argsort(-ref[b, servable], kind="stable")]
        assert [r.item_id for r in res.items] == [f"i{j}" for j in order]
        np.testing.assert_allclose(
            [r.score for r in res.items], ref[b, order], rtol=1e-5, atol=1e-5
        )


def test_terms_are_cached_per_chunk_and_shared_by_versions() -> None:
    h, k = 8, 4
    model = _model(h)
    upd = _index(40, k, h, model)
    v1 = SeedIndex.empty(k, h, chunk_items=16).updated(upd)
    first = [chunk_terms(model, c) for c in v1.chunks]
    assert all(chunk_terms(model, c) is t for c, t in zip(v1.chunks, first, strict=True))
    one = _index(1, k, h, model, seed=5)  # re-cluster item i0 only (chunk 0)
    one = IndexUpdate(**{**one.__dict__, "item_ids": np.asarray(["i0"])})
    v2 = v1.updated(one)
    assert v2.chunks[0] is not v1.chunks[0]
    assert all(a is b for a, b in zip(v2.chunks[1:], v1.chunks[1:], strict=True))
    assert chunk_terms(model, v2.chunks[1]) is first[1]  # unchanged chunk: no re-prepare


def test_bfloat16_table_keeps_the_ranking() -> None:
    h, k = 16, 4
    model = _model(h)
    upd = _index(300, k, h, model, seed=3)
    snap = SeedIndex.empty(k, h).updated(upd)
    users = np.random.default_rng(2).normal(size=(8, h)).astype(np.float32)
    reqs = [ScoreRequest(u, 20) for u in users]
    full = score_batch(model, snap, reqs)
    half = score_batch(model, snap, reqs, dtype="bfloat16")
    for a, b in zip(full, half, strict=True):
        top_a = {r.item_id for r in a.items}
        top_b = {r.item_id for r in b.items}
        assert len(top_a & top_b) >= 16  # top-20 overlap >= 0.8
        s_a = {r.item_id: r.score for r in a.items}
        common = [r for r in b.items if r.item_id in s_a]
        assert max(abs(r.score - s_a[r.item_id]) for r in common) < 0.02
