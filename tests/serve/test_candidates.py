"""Candidate retrieval: ANN pre-filter + exact scoring of the candidates (issue 9, item 3)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ralm.config_files import build_settings
from ralm.errors import ConfigError
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_index import IndexUpdate, SeedIndex
from ralm.serve.candidate_index import CandidateIndex, item_vectors, query_vectors
from ralm.serve.candidates import CandidateRetriever, changed_rows
from ralm.serve.config import ServeConfig
from ralm.serve.scoring import ScoreRequest, score_batch, score_rows
from ralm.serve.store import Click

from .conftest import background_clicks, make_service
from .planted import group_users

H, K = 16, 4


def _model(prior: float = 0.0) -> LookalikeModel:
    torch.manual_seed(0)
    m = LookalikeModel(LookalikeConfig(m=H, h=H, k=K)).eval()
    with torch.no_grad():
        m.prior_weight.fill_(prior)  # gamma = softplus(prior): a visible audience prior
    return m


def _tastes(n_tastes: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(size=(n_tastes, H)), 0).astype(np.float32) * 2  # (T, h)


def _items(
    model: LookalikeModel, n: int, tastes: np.ndarray, seed: int, prefix: str = "i"
) -> IndexUpdate:
    """Items whose centroids come from 1-2 tastes (ReLU-like), long-tailed audiences."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(tastes), (n, 2))
    slot = pick[np.arange(n)[:, None], rng.integers(0, 2, (n, K))]  # (n, k) taste per slot
    cen = np.maximum(tastes[slot] + 0.4 * rng.normal(size=(n, K, H)), 0).astype(np.float32)
    mask = rng.random((n, K)) < 0.85
    mask[:, 0] = True
    cen[~mask] = 0.0
    n_seeds = np.clip(rng.lognormal(np.log(50), 1.0, n), 5, 1e5).astype(np.int64)
    sizes = np.where(mask, np.maximum(1, n_seeds[:, None] // K), 0).astype(np.int64)
    with torch.no_grad():
        glb = model.item_global(
            torch.from_numpy(cen), torch.from_numpy(mask), torch.from_numpy(sizes)
        ).numpy()
    return IndexUpdate(
        item_ids=np.asarray([f"{prefix}{j}" for j in range(n)]),
        centroids=cen,
        mask=mask,
        sizes=sizes,
        global_vec=glb,
        gram=np.einsum("ikh,ijh->ikj", cen, cen).astype(np.float32),
        n_seeds=sizes.sum(1),
        servable=rng.random(n) < 0.9,
        clustered_at=np.full(n, float(seed)),
    )


def _users(tastes: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Universal embeddings whose transformed vectors lean to a taste (m = h here)."""
    rng = np.random.default_rng(seed)
    t = tastes[rng.integers(0, len(tastes), n)]
    return (t + 0.3 * rng.normal(size=t.shape)).astype(np.float32)  # (B, m)


def _ids(res: list) -> list[list[str]]:
    return [[r.item_id for r in x.items] for x in res]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_all_candidates_give_exactly_the_exact_top_n(dtype: str) -> None:
    model = _model()
    tastes = _tastes()
    snap = SeedIndex.empty(K, H, chunk_items=64).updated(_items(model, 300, tastes, 1))
    users = _users(tastes, 5, 2)
    reqs = [ScoreRequest(u, 20, frozenset({"i3", "i7", "nope"})) for u in users]
    exact = score_batch(model, snap, reqs, dtype)
    ann = score_batch(model, snap, reqs, dtype, candidates=CandidateRetriever(snap.n_items))
    assert _ids(ann) == _ids(exact)
    for a, e in zip(ann, exact, strict=True):
        np.testing.assert_allclose([r.score for r in a.items], [r.score for r in e.items], 1e-6)
        np.testing.assert_allclose([r.pctr for r in a.items], [r.pctr for r in e.items], 1e-6)
        assert not {"i3", "i7"} & {r.item_id for r in a.items}


def test_scores_of_chosen_rows_equal_the_scorer_on_the_whole_table() -> None:
    model = _model()
    upd = _items(model, 200, _tastes(), 3)
    snap = SeedIndex.empty(K, H, chunk_items=32).updated(upd)
    rows = np.random.default_rng(0).permutation(snap.servable_rows)[:57]  # across chunks
    with torch.no_grad():
        e_u = model.transform(torch.from_numpy(_users(_tastes(), 3, 4)))
        names = ("centroids", "mask", "global_vec", "gram", "sizes")
        ref = model.score(e_u, **{n: torch.from_numpy(getattr(upd, n)) for n in names})
        got = score_rows(model, snap, e_u, rows)
    np.testing.assert_allclose(got.numpy(), ref[:, rows].numpy(), rtol=1e-5, atol=1e-6)


def _recall(got: list[list[str]], ref: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(r)) / len(r) for g, r in zip(got, ref, strict=True)]))


def test_recall_on_planted_tastes_with_an_ivf_index() -> None:
    model = _model(prior=-1.0)
    tastes = _tastes()
    snap = SeedIndex.empty(K, H).updated(_items(model, 6000, tastes, 5))
    ret = CandidateRetriever(150, nprobe=8)
    reqs = [ScoreRequest(u, 20) for u in _users(tastes, 40, 6)]
    got = score_batch(model, snap, reqs, candidates=ret)
    index = ret._state.index  # type: ignore[union-attr]
    assert not index.exact and index.index.nprobe < index.index.nlist  # a real ANN search
    assert _recall(_ids(got), _ids(score_batch(model, snap, reqs))) >= 0.95


def test_search_equals_brute_force_inner_products_of_the_vectors() -> None:
    model = _model(prior=-1.0)
    upd = _items(model, 500, _tastes(), 7)
    snap = SeedIndex.empty(K, H, chunk_items=128).updated(upd)
    ret = CandidateRetriever(30)  # flat (exact) index below MIN_IVF_VECTORS
    with torch.no_grad():
        e_u = model.transform(torch.from_numpy(_users(_tastes(), 4, 8)))
    got = ret.search(model, snap, e_u, [30] * 4)
    t = {n: torch.from_numpy(getattr(upd, n)) for n in ("centroids", "mask", "global_vec", "sizes")}
    vecs, _ = item_vectors(model, t["centroids"], t["mask"], t["global_vec"], t["sizes"])
    ip = query_vectors(e_u) @ vecs.T  # (B, I) naive
    ip[:, ~upd.servable] = -np.inf
    for b in range(4):
        assert set(got[b].tolist()) == set(np.argsort(-ip[b])[:30].tolist())


@pytest.mark.parametrize("kind", ["global", "centroids"])
def test_other_vector_kinds_reach_high_recall(kind: str) -> None:
    model = _model(prior=-1.0)
    tastes = _tastes()
    snap = SeedIndex.empty(K, H, chunk_items=256).updated(_items(model, 1500, tastes, 23))
    reqs = [ScoreRequest(u, 10) for u in _users(tastes, 30, 24)]
    got = score_batch(model, snap, reqs, candidates=CandidateRetriever(100, kind=kind))
    assert all(len(r.items) == 10 for r in got)
    assert _recall(_ids(got), _ids(score_batch(model, snap, reqs))) >= 0.95


def _changed(model: LookalikeModel, snap: SeedIndex, seed: int, n_new: int) -> IndexUpdate:
    """Re-clustered old items (some now unservable), plus ``n_new`` new items."""
    tastes = _tastes()
    rng = np.random.default_rng(seed)
    old = _items(model, 40, tastes, seed)
    rows = rng.choice(snap.n_items, 40, replace=False)
    old = IndexUpdate(**{**old.__dict__, "item_ids": snap.item_ids[rows]})
    new = _items(model, n_new, tastes, seed + 1, prefix=f"new{seed}-")
    return IndexUpdate.concat([old, new])


@pytest.mark.parametrize(
    ("n_items", "kind"), [(600, "mean"), (5000, "mean"), (600, "global"), (600, "centroids")]
)  # flat or IVF index
def test_incremental_update_equals_a_rebuild(n_items: int, kind: str) -> None:
    model = _model(prior=-1.0)
    tastes = _tastes()
    v1 = SeedIndex.empty(K, H, chunk_items=256).updated(_items(model, n_items, tastes, 9))
    ret = CandidateRetriever(50, kind=kind, nprobe=10_000)  # every list probed: exact
    ret.sync(model, v1)
    v2 = v1.updated(_changed(model, v1, 10, 30))
    ret.sync(model, v2)
    assert (ret.builds, ret.updates, ret.version) == (1, 1, v2.version)
    fresh = CandidateRetriever(50, kind=kind, nprobe=10_000)
    fresh.sync(model, v2)
    assert ret.n_indexed == fresh.n_indexed == v2.n_servable
    per_item = K if kind == "centroids" else 1
    assert ret._state.index.ntotal <= per_item * v2.n_servable  # type: ignore[union-attr]
    assert ret._state.index.ntotal == fresh._state.index.ntotal  # type: ignore[union-attr]
    with torch.no_grad():
        e_u = model.transform(torch.from_numpy(_users(tastes, 20, 11)))
    a = ret.search(model, v2, e_u, [50] * 20)
    b = fresh.search(model, v2, e_u, [50] * 20)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_changed_rows_finds_exactly_the_updated_and_appended_rows() -> None:
    model = _model()
    v1 = SeedIndex.empty(K, H, chunk_items=64).updated(_items(model, 300, _tastes(), 12))
    upd = _changed(model, v1, 13, 7)
    v2 = v1.updated(upd)
    want = sorted(v2.row_of[i] for i in upd.item_ids.tolist())
    assert changed_rows(v1, v2).tolist() == want
    assert changed_rows(v2, v2).size == 0


def test_new_items_become_retrievable_after_their_publish() -> None:
    model = _model(prior=-1.0)
    tastes = _tastes()
    v1 = SeedIndex.empty(K, H, chunk_items=256).updated(_items(model, 800, tastes, 14))
    ret = CandidateRetriever(20)
    user = _users(tastes, 1, 15)
    req = [ScoreRequest(user[0], 5)]
    assert score_batch(model, v1, req, candidates=ret)
    # a new item whose seeds look exactly like the user, with a large audience
    with torch.no_grad():
        e = model.transform(torch.from_numpy(user)).numpy()[0]  # (h,)
    new = _items(model, 1, tastes, 16, prefix="fresh")
    cen = np.repeat(e[None, None, :], K, axis=1).astype(np.float32)
    sizes = np.full((1, K), 5000, np.int64)
    with torch.no_grad():
        glb = model.item_global(torch.from_numpy(cen), torch.ones(1, K, dtype=torch.bool),
                                torch.from_numpy(sizes)).numpy()  # fmt: skip
    new = IndexUpdate(**{**new.__dict__, "centroids": cen, "mask": np.ones((1, K), bool),
                         "sizes": sizes, "global_vec": glb, "servable": np.ones(1, bool),
                         "gram": np.einsum("ikh,ijh->ikj", cen, cen)})  # fmt: skip
    v2 = v1.updated(new)
    assert "fresh0" in _ids(score_batch(model, v2, req))[0]  # exact scoring ranks it
    assert "fresh0" in _ids(score_batch(model, v2, req, candidates=ret))[0]
    assert (ret.builds, ret.updates) == (1, 1)  # caught up incrementally, no rebuild


def test_growth_past_the_rule_retrains_the_index() -> None:
    model = _model()
    tastes = _tastes()
    v1 = SeedIndex.empty(K, H, chunk_items=256).updated(_items(model, 100, tastes, 17))
    ret = CandidateRetriever(10, retrain_growth=2.0)
    ret.sync(model, v1)
    v2 = v1.updated(_items(model, 50, tastes, 18, prefix="a"))  # 1.5x: incremental
    ret.sync(model, v2)
    assert (ret.builds, ret.updates) == (1, 1)
    v3 = v2.updated(_items(model, 200, tastes, 19, prefix="b"))  # past 2x: re-trained
    ret.sync(model, v3)
    assert (ret.builds, ret.updates) == (2, 1)
    assert ret._state.index.n_trained == v3.n_servable  # type: ignore[union-attr]


def test_an_older_snapshot_keeps_only_its_own_servable_rows() -> None:
    model = _model()
    tastes = _tastes()
    v1 = SeedIndex.empty(K, H, chunk_items=64).updated(_items(model, 100, tastes, 20))
    v2 = v1.updated(_items(model, 30, tastes, 21, prefix="late"))
    ret = CandidateRetriever(1000)
    ret.sync(model, v2)
    with torch.no_grad():
        e_u = model.transform(torch.from_numpy(_users(tastes, 1, 22)))
    (rows,) = ret.search(model, v1, e_u, [1000])  # a request still on v1
    assert set(rows.tolist()) == set(v1.servable_rows.tolist())


def test_candidate_index_remove_and_add_by_id() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5000, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)  # unit vectors: v_10 is its own best match
    ix = CandidateIndex.build(v, np.arange(5000) * 3, nprobe=1000)
    q = v[[10]] * 10
    assert ix.search(q, 1)[0, 0] == 30
    ix.remove(np.asarray([30]))
    assert ix.ntotal == 4999 and 30 not in ix.search(q, 50)[0]
    ix.add(v[[10]], np.asarray([7]))
    assert ix.search(q, 1)[0, 0] == 7


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"candidates": 0}, "--candidates"),
        ({"candidates": -5}, "--candidates"),
        ({"candidates": 100, "max_n": 1000}, "must be at least max_n (1000)"),
        ({"candidate_nprobe": 0}, "--candidate-nprobe"),
    ],
)
def test_bad_candidate_settings_are_one_line_errors(values: dict, needle: str) -> None:
    from ralm.cli.serve import SERVE

    with pytest.raises(ConfigError) as e:
        build_settings(SERVE, None, values)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_service_with_candidates_equals_exact_and_follows_publishes(tmp_path: Path) -> None:
    exact = make_service(tmp_path / "exact")
    every = make_service(tmp_path / "every", candidates=1000)  # C >= items: exact results
    ann = make_service(tmp_path / "ann", candidates=8, max_n=8)  # 8 of 15 items
    svcs = (exact, every, ann)
    try:
        for svc in svcs:
            svc.add_clicks(background_clicks())
            svc.start()
        assert ann.candidates is not None and ann.candidates.version == ann.holder.version
        for g in range(3):
            feats = {"group": f"g{g}"}
            ref = exact.recommend(features=feats, n=15).items
            got = every.recommend(features=feats, n=15).items
            assert [r.item_id for r in got] == [r.item_id for r in ref]
            np.testing.assert_allclose([r.score for r in got], [r.score for r in ref], 1e-6)
            scores = {r.item_id: r.score for r in ref}
            a = ann.recommend(features=feats, n=8).items
            assert {r.item_id for r in ref[:5]} <= {r.item_id for r in a}  # the group's items
            for r in a:  # candidates are scored exactly, best first
                assert abs(r.score - scores[r.item_id]) < 1e-5
            assert [r.score for r in a] == sorted((r.score for r in a), reverse=True)
        # a new item on the fast path: retrievable by its look-alikes after the publish
        before = ann.candidates.updates
        ann.add_clicks([Click(u, "fresh", time.time()) for u in group_users(2, 3)])
        assert ann.reclusterer.run_fast().n_items == 1
        assert ann.candidates.updates == before + 1 and ann.candidates.builds == 1
        assert ann.candidates.version == ann.holder.version
        assert "fresh" in [r.item_id for r in ann.recommend(features={"group": "g2"}, n=6).items]
        assert "fresh" not in [
            r.item_id for r in ann.recommend(features={"group": "g0"}, n=6).items
        ]
    finally:
        for svc in svcs:
            svc.close()


def test_a_served_config_with_candidates_round_trips() -> None:
    cfg = ServeConfig(candidates=2000, candidate_vectors="global", candidate_nprobe=64)
    assert CandidateRetriever.from_config(cfg).n_candidates == 2000


def test_serve_has_the_candidate_flags() -> None:
    from typer.testing import CliRunner

    from ralm.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "400"}).output
    for flag in ("--candidates", "--candidate-vectors", "--candidate-nprobe",
                 "--candidate-nlist", "--candidate-retrain-growth"):  # fmt: skip
        assert flag in out


def test_a_scorer_without_prepared_terms_scores_its_candidates_too() -> None:
    class DotScorer:  # a stand-in: score = e . g, no prepared terms, no priors
        def transform(self, u: torch.Tensor) -> torch.Tensor:
            return u

        def score(self, e_u: torch.Tensor, centroids: torch.Tensor, mask: torch.Tensor,
                  global_vec: torch.Tensor, **kw: object) -> torch.Tensor:  # fmt: skip
            return e_u @ global_vec.T  # (B, I)

        def pctr(self, s: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(s)

    upd = _items(_model(), 120, _tastes(), 25)
    snap = SeedIndex.empty(K, H, chunk_items=32).updated(upd)
    reqs = [ScoreRequest(u, 7) for u in _users(_tastes(), 3, 26)]
    scorer = DotScorer()
    exact = score_batch(scorer, snap, reqs)  # type: ignore[arg-type]
    ann = score_batch(scorer, snap, reqs, candidates=CandidateRetriever(500))  # type: ignore[arg-type]
    assert _ids(ann) == _ids(exact)
