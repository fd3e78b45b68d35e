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
