"""Per-item seed k-means: padding, exact means, no subsampling, warm start, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from ralm.lookalike.clustering import average_seeds, cluster_seeds


def _blobs(counts: list[int], h: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 10, (4, h))
    x = np.concatenate(
        [centers[rng.integers(0, 4, n)] + rng.normal(0, 0.1, (n, h)) for n in counts]
    )
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return x.astype(np.float32), offsets


def test_shapes_masks_and_small_items_keep_their_seeds() -> None:
    x, off = _blobs([0, 1, 3, 4, 40, 3000])
    c = cluster_seeds(x, off, k=4, seed=1)
    assert c.centroids.shape == (6, 4, 6) and c.mask.shape == (6, 4)
    np.testing.assert_array_equal(c.mask.sum(1), [0, 1, 3, 4, 4, 4])
    np.testing.assert_array_equal(c.sizes.sum(1), [0, 1, 3, 4, 40, 3000])  # nothing subsampled
    np.testing.assert_array_equal(c.centroids[2, :3], x[1:4])  # seeds are the centroids
    assert np.all(c.centroids[~c.mask] == 0) and np.all(c.sizes[~c.mask] == 0)
    # every centroid is exactly the mean of the seeds assigned to it
    for i in range(6):
        xi, ai = x[off[i] : off[i + 1]], c.assign[off[i] : off[i + 1]]
        for j in np.flatnonzero(c.mask[i]):
            np.testing.assert_allclose(c.centroids[i, j], xi[ai == j].mean(0), atol=1e-4)
            assert c.sizes[i, j] == (ai == j).sum()


def test_recovers_planted_clusters_and_is_deterministic() -> None:
    x, off = _blobs([500, 800])
    a = cluster_seeds(x, off, k=10, seed=7)
    b = cluster_seeds(x, off, k=10, seed=7)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.assign, b.assign)
    # 4 tight blobs (noise std 0.1 in 6-d), 10 clusters cover them all: inertia < n * 6 * 0.01
    assert a.inertia < 1300 * 6 * 0.01


def test_warm_start_from_converged_centroids_keeps_the_solution() -> None:
    x, off = _blobs([200, 300, 2])
    cold = cluster_seeds(x, off, k=4, seed=0)
    warm = cluster_seeds(x, off, k=4, init=cold.centroids, init_mask=cold.mask, warm_niter=2)
    assert warm.inertia <= cold.inertia * (1 + 1e-5)
    # warm start from a perturbed state also works, masked init slots get replaced by seeds
    init_mask = cold.mask.copy()
    init_mask[0, 0] = False
    warm2 = cluster_seeds(x + 0.05, off, k=4, init=cold.centroids, init_mask=init_mask)
    assert warm2.mask[:2].all() and np.isfinite(warm2.centroids).all()


def test_bad_inputs_raise() -> None:
    x, off = _blobs([5, 5])
    with pytest.raises(ValueError, match="end at S"):
        cluster_seeds(x, off[:-1], k=2)
    with pytest.raises(ValueError, match="init must have shape"):
        cluster_seeds(x, off, k=2, init=np.zeros((2, 3, 6), np.float32))


def test_average_seeds_is_the_mean() -> None:
    x, off = _blobs([3, 0, 10])
    a = average_seeds(x, off)
    assert a.centroids.shape == (3, 1, 6)
    np.testing.assert_allclose(a.centroids[0, 0], x[:3].mean(0), atol=1e-5)
    np.testing.assert_allclose(a.centroids[2, 0], x[3:].mean(0), atol=1e-5)
    np.testing.assert_array_equal(a.mask[:, 0], [True, False, True])
    np.testing.assert_array_equal(a.sizes[:, 0], [3, 0, 10])


def test_batched_torch_lloyd_follows_the_same_conventions() -> None:
    from ralm.lookalike.clustering_batched import lloyd_batched

    x, off = _blobs([0, 2, 4, 30, 45, 300, 1000])
    t = lloyd_batched(x, off, k=4, seed=0)
    f = cluster_seeds(x, off, k=4, seed=0)
    np.testing.assert_array_equal(t.sizes.sum(1), np.diff(off))
    np.testing.assert_array_equal(t.centroids[:3], f.centroids[:3])  # <= k seeds: the seeds
    for i in range(3, 7):
        xi, ai = x[off[i] : off[i + 1]], t.assign[off[i] : off[i + 1]]
        for j in np.flatnonzero(t.mask[i]):
            np.testing.assert_allclose(t.centroids[i, j], xi[ai == j].mean(0), atol=1e-4)
    resid = sum(
        float(((x[off[i] : off[i + 1]] - t.centroids[i][t.assign[off[i] : off[i + 1]]]) ** 2).sum())
        for i in range(7)
    )
    assert t.inertia == pytest.approx(resid, rel=1e-4)
    warm = lloyd_batched(x, off, k=4, init=t.centroids, init_mask=t.mask, niter=2)
    assert warm.inertia <= t.inertia * (1 + 1e-5)


def test_batched_torch_lloyd_equals_a_naive_lloyd_loop_from_the_same_start() -> None:
    """Warm start (so no random draw): every item follows plain Lloyd iterations exactly,
    whatever the bucket chunking."""
    from ralm.lookalike.clustering_batched import lloyd_batched

    counts = [25, 30, 31, 60, 200]
    x, off = _blobs(counts)
    rng = np.random.default_rng(1)
    k, niter = 4, 3
    init = np.stack(
        [x[off[i] + rng.choice(c, k, replace=False)] for i, c in enumerate(counts)]
    )  # (I, k, h)
    results = [
        lloyd_batched(x, off, k, init=init, niter=niter, max_elements=m) for m in (1 << 22, 64)
    ]
    for i in range(len(counts)):
        xi = x[off[i] : off[i + 1]].astype(np.float64)
        c = init[i].astype(np.float64)
        for it in range(niter + 1):
            lab = ((xi[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
            n = np.bincount(lab, minlength=k)
            means = np.stack([xi[lab == j].mean(0) if n[j] else c[j] for j in range(k)])
            c = means if it < niter else np.where(n[:, None] > 0, means, 0.0)
        for t in results:
            np.testing.assert_array_equal(t.assign[off[i] : off[i + 1]], lab)
            np.testing.assert_array_equal(t.sizes[i], n)
            np.testing.assert_allclose(t.centroids[i], c, atol=1e-4)


def _naive_lloyd(
    xi: np.ndarray, c: np.ndarray, k_i: int, k: int, niter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain Lloyd in float64 over the first k_i slots from centroids c (k_i, h), all
    iterations, then the exact means of the final assignment padded to k slots."""
    xi = xi.astype(np.float64)
    c = c.astype(np.float64)
    for it in range(niter + 1):
        lab = ((xi[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        n = np.bincount(lab, minlength=k_i)
        means = np.stack([xi[lab == j].mean(0) if n[j] else c[j] for j in range(k_i)])
        c = means if it < niter else np.where(n[:, None] > 0, means, 0.0)
    out = np.zeros((k, xi.shape[1]))
    out[:k_i] = c
    return out, np.pad(n, (0, k - k_i)), lab


def test_torch_clusters_do_not_depend_on_the_other_items_of_the_call() -> None:
    """Same item seeds -> identical clusters whatever the chunking, the order, the call
    split and the thread count, cold and warm (with invalid warm slots drawn at random)."""
    import torch

    from ralm.lookalike.clustering_batched import lloyd_batched

    counts = [0, 3, 25, 26, 31, 40, 41, 60, 200, 7, 33, 90]
    x, off = _blobs(counts, seed=3)
    seeds = 1000 + np.arange(len(counts)) * 7
    k = 4
    ref = lloyd_batched(x, off, k, niter=6, item_seeds=seeds)
    init_mask = ref.mask.copy()
    init_mask[[2, 5, 8], 1] = False
    warm_ref = lloyd_batched(
        x + 0.3, off, k, init=ref.centroids, init_mask=init_mask, niter=3, item_seeds=seeds
    )

    def split(parts: list[np.ndarray], warm: bool, **kw: object) -> dict[str, np.ndarray]:
        got = {n: np.zeros_like(getattr(ref, n)) for n in ("centroids", "mask", "sizes")}
        got["assign"] = np.zeros_like(ref.assign)
        for items in parts:
            xs = np.concatenate([x[off[i] : off[i + 1]] for i in items])
            o = np.concatenate([[0], np.cumsum(np.diff(off)[items])]).astype(np.int64)
            c = lloyd_batched(
                xs + (0.3 if warm else 0.0), o, k, item_seeds=seeds[items],
                niter=3 if warm else 6,
                init=ref.centroids[items] if warm else None,
                init_mask=init_mask[items] if warm else None, **kw,  # type: ignore[arg-type]
            )  # fmt: skip
            for n in ("centroids", "mask", "sizes"):
                got[n][items] = getattr(c, n)
            rows = np.concatenate([np.arange(off[i], off[i + 1]) for i in items])
            got["assign"][rows] = c.assign
        return got

    rng = np.random.default_rng(0)
    perm = rng.permutation(len(counts))
    layouts = [
        ([np.arange(len(counts))], {"max_elements": 64}),  # one item per chunk
        ([perm], {}),
        ([perm[:5], perm[5:]], {}),
        ([np.asarray([i]) for i in range(len(counts))], {}),
    ]
    threads = torch.get_num_threads()
    try:
        for j, (parts, kw) in enumerate(layouts):
            torch.set_num_threads(1 + j % 2)
            for warm, want in ((False, ref), (True, warm_ref)):
                got = split(parts, warm, **kw)
                for n in ("centroids", "mask", "sizes", "assign"):
                    np.testing.assert_array_equal(got[n], getattr(want, n), err_msg=f"{j} {n}")
    finally:
        torch.set_num_threads(threads)
    # and a different item seed gives a different random start
    other = lloyd_batched(x, off, k, niter=0, item_seeds=seeds + 1)
    first = lloyd_batched(x, off, k, niter=0, item_seeds=seeds)
    assert not np.array_equal(other.centroids[8], first.centroids[8])


def test_hash_keys_are_per_item_and_uniform() -> None:
    from ralm.lookalike.clustering_batched import hash_keys

    a = hash_keys(np.asarray([5, 6, 7]), 50)
    b = hash_keys(np.asarray([7]), 80)
    np.testing.assert_array_equal(a[2], b[0, :50])  # counter-based: no dependence on others
    assert (a >= 0).all() and len(np.unique(a)) == a.size
    big = hash_keys(np.arange(2000), 100).astype(np.float64) / 2.0**63
    assert abs(big.mean() - 0.5) < 0.01 and abs(big.var() - 1 / 12) < 0.005


def test_items_k_rule() -> None:
    from ralm.lookalike.clustering import items_k

    counts = np.asarray([0, 1, 4, 5, 6, 11, 99, 100, 101, 1000])
    np.testing.assert_array_equal(items_k(counts, 20, "fixed"), np.full(10, 20))
    want = [max(1, min(20, int(np.ceil(n / 5)))) for n in counts]
    np.testing.assert_array_equal(items_k(counts, 20, "seeds", 5), want)
    np.testing.assert_array_equal(items_k(counts, 3, "seeds", 2), [1, 1, 2, 3, 3, 3, 3, 3, 3, 3])
    with pytest.raises(ValueError, match="k_rule"):
        items_k(counts, 20, "sqrt")


@pytest.mark.parametrize("warm", [False, True])
def test_torch_per_item_k_equals_a_naive_per_item_loop(warm: bool) -> None:
    """k_i = min(k, ceil(n / 5)): every item follows plain Lloyd over its own k_i slots
    from its own hash-key start (or its valid warm slots), the other slots masked."""
    from ralm.lookalike.clustering import items_k
    from ralm.lookalike.clustering_batched import hash_keys, lloyd_batched

    counts = [0, 1, 2, 4, 6, 9, 14, 23, 40, 64, 130]
    # unit gaussians near the origin: no float32 near-ties of |c|^2 - 2 x.c vs float64
    x = np.random.default_rng(5).normal(size=(sum(counts), 6)).astype(np.float32)
    off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    k, niter = 6, 4
    seeds = np.arange(len(counts)) + 11
    ks = items_k(np.asarray(counts), k, "seeds", 5)
    rng = np.random.default_rng(2)
    init = rng.normal(size=(len(counts), k, x.shape[1])).astype(np.float32)
    init_mask = rng.random((len(counts), k)) < 0.7
    got = lloyd_batched(
        x, off, k, niter=niter, item_seeds=seeds, item_k=ks,
        init=init if warm else None, init_mask=init_mask if warm else None,
    )  # fmt: skip
    for i, n_i in enumerate(counts):
        xi, k_i = x[off[i] : off[i + 1]], int(ks[i])
        if n_i <= k_i:  # the seeds are the centroids
            np.testing.assert_array_equal(got.centroids[i, :n_i], xi)
            np.testing.assert_array_equal(got.mask[i], np.arange(k) < n_i)
            continue
        start = xi[np.argsort(-hash_keys(seeds[i : i + 1], n_i)[0], kind="stable")[:k_i]]
        if warm:
            start = np.where(init_mask[i, :k_i, None], init[i, :k_i], start)
        c, n, lab = _naive_lloyd(xi, start, k_i, k, niter)
        np.testing.assert_array_equal(got.assign[off[i] : off[i + 1]], lab, err_msg=str(i))
        np.testing.assert_array_equal(got.sizes[i], n)
        np.testing.assert_array_equal(got.mask[i], n > 0)
        np.testing.assert_allclose(got.centroids[i], c, atol=1e-4)
    assert got.mask.sum(1).max() <= ks.max() and (got.mask.sum(1) <= ks).all()


def test_faiss_per_item_k_equals_per_item_calls() -> None:
    from ralm.lookalike.clustering import cluster_items, items_k

    counts = [0, 1, 3, 6, 11, 27, 64, 300]
    x, off = _blobs(counts, seed=8)
    k = 8
    ks = items_k(np.asarray(counts), k, "seeds", 4)
    seeds = np.arange(len(counts)) * 3 + 1
    got = cluster_items(
        x, off, k, backend="faiss", item_seeds=seeds, k_rule="seeds", seeds_per_cluster=4
    )
    for i in range(len(counts)):
        xi, k_i = x[off[i] : off[i + 1]], int(ks[i])
        one = cluster_seeds(xi, np.asarray([0, xi.shape[0]]), k_i, item_seeds=seeds[i : i + 1])
        np.testing.assert_array_equal(got.centroids[i, :k_i], one.centroids[0])
        np.testing.assert_array_equal(got.sizes[i, :k_i], one.sizes[0])
        np.testing.assert_array_equal(got.assign[off[i] : off[i + 1]], one.assign)
        assert not got.mask[i, k_i:].any() and (got.centroids[i, k_i:] == 0).all()
        np.testing.assert_array_equal(got.sizes[i].sum(), counts[i])


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_k_rule_seeds_through_the_index_builder(backend: str) -> None:
    """LookalikeConfig(k_rule="seeds") reaches both backends: item i has at most
    ceil(n_i / seeds_per_cluster) valid slots, every seed counted, scores finite."""
    import torch

    from ralm.lookalike.config import LookalikeConfig
    from ralm.lookalike.model import LookalikeModel
    from ralm.lookalike.seed_index import build_seed_index

    rng = np.random.default_rng(0)
    counts = np.asarray([0, 1, 3, 7, 12, 30, 80, 200])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    universal = rng.normal(size=(300, 10)).astype(np.float32)
    users = rng.integers(0, 300, int(offsets[-1]))
    torch.manual_seed(0)
    cfg = LookalikeConfig(m=10, h=8, k=6, kmeans_backend=backend, k_rule="seeds",
                          seeds_per_cluster=4)  # fmt: skip
    model = LookalikeModel(cfg).eval()
    index = build_seed_index(model, universal, (offsets, users), seed=3)
    k_i = np.minimum(6, -(-counts // 4))
    used = index.mask.sum(1)
    assert (used <= k_i).all() and (used[counts > 0] >= 1).all()
    assert (used[counts >= 12] == k_i[counts >= 12]).all()  # no empty clusters here
    np.testing.assert_array_equal(index.sizes.sum(1), counts)
    assert not index.mask[:, 2:][counts <= 8].any()  # slots beyond k_i stay masked
    e_u = model.transform(torch.from_numpy(universal[:5]))
    s = model.score(e_u, **index.tensors())
    assert torch.isfinite(s).all()
    fixed = build_seed_index(
        LookalikeModel(cfg.model_copy(update={"k_rule": "fixed"})).eval(),
        universal, (offsets, users), seed=3,
    )  # fmt: skip
    np.testing.assert_array_equal(fixed.mask.sum(1), np.minimum(counts, 6))
