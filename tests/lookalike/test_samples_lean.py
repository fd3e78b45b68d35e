"""The memory-lean example sampling gives the examples of the plain implementation."""

from __future__ import annotations

import numpy as np
import pytest

from ralm.data.encoded import EncodedDataset, Split
from ralm.lookalike.samples import (
    _mark_forbidden,
    click_keys,
    negative_distribution,
    seed_sets,
    training_examples,
)


def _plain_training_examples(ds, seeds, neg_ratio, neg_sampling, rng, rounds=8):
    """The previous implementation (every temporary of all pairs at once)."""
    pos = click_keys(ds, (Split.TRAIN,))
    pu, pi = pos // ds.n_items, pos % ds.n_items
    probs = negative_distribution(ds, seeds, neg_sampling)
    u = np.repeat(pu, neg_ratio)
    items = rng.choice(ds.n_items, size=u.size, p=probs)
    for _ in range(rounds + 1):
        keys = u * ds.n_items + items
        at = np.minimum(np.searchsorted(pos, keys), max(pos.size - 1, 0))
        bad = pos[at] == keys
        if not bad.any():
            break
        items[bad] = rng.choice(ds.n_items, size=int(bad.sum()), p=probs)
    nu, ni = u[~bad], items[~bad]
    users = np.concatenate([pu, nu])
    items = np.concatenate([pi, ni])
    labels = np.concatenate([np.ones(pu.size, np.float32), np.zeros(nu.size, np.float32)])
    perm = rng.permutation(users.size)
    return users[perm], items[perm], labels[perm]


@pytest.mark.parametrize(("ratio", "how"), [(4, "log_uniform"), (2, "uniform"), (30, "popularity")])
def test_training_examples_equal_the_plain_implementation(
    toy: EncodedDataset, ratio: int, how: str
) -> None:
    seeds = seed_sets(toy)
    got = training_examples(toy, seeds, ratio, how, np.random.default_rng([3, ratio]))
    ref = _plain_training_examples(toy, seeds, ratio, how, np.random.default_rng([3, ratio]))
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert (got[2] == 0).sum() > (ratio - 1) * (got[2] > 0).sum()  # negatives were drawn


def test_mark_forbidden_chunked_equals_all_at_once() -> None:
    rng = np.random.default_rng(0)
    n_items = 50
    forbidden = np.unique(rng.integers(0, 40 * n_items, size=600))
    u, items = rng.integers(0, 40, size=1000), rng.integers(0, n_items, size=1000)
    keys = u * n_items + items
    want = np.isin(keys, forbidden)
    out = np.ones(1000, dtype=bool)
    _mark_forbidden(u, items, n_items, forbidden, out, chunk=37)
    np.testing.assert_array_equal(out, want)
    assert want.any() and not want.all()
    _mark_forbidden(u, items, n_items, np.zeros(0, np.int64), out)
    assert not out.any()


def test_seen_grid_equals_the_pairwise_lookup() -> None:
    """``SeedSets.seen`` (the users' own seed lists against sorted columns) gives the
    (B, N) grid of the former formulation, ``find`` over every pair, and a set of pairs."""
    from ralm.lookalike.samples import SeedSets

    rng = np.random.default_rng(0)
    for _ in range(200):
        n_users, n_items = int(rng.integers(1, 50)), int(rng.integers(1, 30))
        pairs = np.unique(rng.integers(0, n_users * n_items, size=int(rng.integers(0, 300))))
        item, user = np.divmod(pairs, n_users)  # sorted by (item, user), as seed_csr gives
        offsets = np.r_[0, np.cumsum(np.bincount(item, minlength=n_items))].astype(np.int64)
        seeds = SeedSets(offsets=offsets, users=user.astype(np.int64), n_users=n_users)
        b, n = int(rng.integers(0, 40)), int(rng.integers(0, 40))
        u, c = rng.integers(0, n_users, b), rng.integers(0, n_items, n)  # repeats included
        got = seeds.seen(u, c)
        old = seeds.find(np.repeat(u, n), np.tile(c, b)).reshape(b, n) >= 0
        known = set(zip(user.tolist(), item.tolist(), strict=True))
        naive = np.array([[(x, y) in known for y in c.tolist()] for x in u.tolist()], bool)
        assert got.dtype == bool and got.shape == (b, n)
        np.testing.assert_array_equal(got, old)
        np.testing.assert_array_equal(got, naive.reshape(b, n))


def test_seen_grid_on_the_toy_dataset(toy: EncodedDataset) -> None:
    seeds = seed_sets(toy)
    rng = np.random.default_rng(1)
    u, c = rng.integers(0, toy.n_users, 256), rng.integers(0, toy.n_items, 256)
    old = seeds.find(np.repeat(u, c.size), np.tile(c, u.size)).reshape(u.size, -1) >= 0
    got = seeds.seen(u, c)
    assert got.any() and not got.all()
    np.testing.assert_array_equal(got, old)
