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
