"""Stage-2 examples: seed sets of items and (user, item, label) training/validation samples.

* Seeds of an item = its distinct clickers (``label > 0``) in the given splits (TRAIN for
  training and warm evaluation), as CSR sorted by (item, user).
* Positives = distinct TRAIN clicks; negatives = ``neg_ratio`` items per positive drawn
  from the items that have at least one seed ("uniform"), or proportionally to their TRAIN
  click count ("popularity"), rejecting items the user clicked in TRAIN (a few rejection
  rounds; leftovers are dropped). Items without seeds are never negatives: they could only
  score 0 and would make the task trivially easy.
* Validation = distinct VALID clicks vs negatives drawn the same way, rejecting the user's
  TRAIN and VALID clicks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ralm.data.clicks import click_keys, seed_csr
from ralm.data.encoded import EncodedDataset, Split


@dataclass
class SeedSets:
    """Seed users of every item, CSR sorted by (item, user).

    Attributes:
        offsets: int64 (I + 1,) row range of each item.
        users: int64 (S,) seed user of every row.
        n_users: number of users (for the (item, user) key).
    """

    offsets: np.ndarray
    users: np.ndarray
    n_users: int
    _keys: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _by_user: tuple[np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def n_items(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def find(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Seed row of each (user, item) pair, -1 where the user is not a seed of the item."""
        if self._keys is None:  # built once: (item, user) key of every seed row
            item_of = np.repeat(np.arange(self.n_items, dtype=np.int64), self.counts)
            self._keys = item_of * self.n_users + self.users  # (S,) sorted
        keys = self._keys
        q = np.asarray(items, np.int64) * self.n_users + np.asarray(users, np.int64)
        # queries in ascending order: numpy's binary search then starts each one from the
        # previous result (a batch of 256 in 8.9M keys: ~3x fewer cache-missing probes)
        order = np.argsort(q)
        pos = np.empty_like(q)
        pos[order] = np.searchsorted(keys, q[order])
        pos_c = np.minimum(pos, max(keys.size - 1, 0))
        hit = (pos < keys.size) & (keys[pos_c] == q) if keys.size else np.zeros(q.size, bool)
        return np.where(hit, pos_c, -1).astype(np.int64)

    def by_user(self) -> tuple[np.ndarray, np.ndarray]:
        """The transposed CSR, built once: ``(offsets (n_users + 1,), items (S,))``, the
        items each user is a seed of, sorted by (user, item)."""
        if self._by_user is None:
            item_of = np.repeat(np.arange(self.n_items, dtype=np.int32), self.counts)  # (S,)
            order = np.argsort(self.users, kind="stable")  # rows by (user, item)
            items = item_of[order]
            del item_of
            offsets = np.zeros(self.n_users + 1, dtype=np.int64)
            np.cumsum(np.bincount(self.users, minlength=self.n_users), out=offsets[1:])
            self._by_user = (offsets, items)
        return self._by_user

    def seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """bool (B, N): ``out[r, c]`` = user ``users[r]`` is a seed of item ``items[c]``.

        Equal to ``find(repeat(users, N), tile(items, B)).reshape(B, N) >= 0``, but the
        work is the rows' own seed lists (a few items per user) searched among the N
        columns' distinct items, not B x N binary searches over all S seed rows (whose
        cost grew with the catalogue: 65,536 random probes into S keys per batch of 256).
        """
        users = np.asarray(users, np.int64).reshape(-1)
        cols = np.asarray(items, np.int64).reshape(-1)
        out = np.zeros((users.size, cols.size), dtype=bool)
        if users.size == 0 or cols.size == 0:
            return out
        offsets, user_items = self.by_user()
        lo, n = offsets[users], offsets[users + 1] - offsets[users]  # (B,) each row's seeds
        total = int(n.sum())
        if total == 0:
            return out
        row = np.repeat(np.arange(users.size), n)  # (T,) row of each (row, seed item)
        start = np.repeat(lo - (np.cumsum(n) - n), n)
        it = user_items[start + np.arange(total)]  # (T,) the items row r's user seeds
        # the columns' distinct items (sorted), and each seed item's place among them
        uniq, col_of = np.unique(cols, return_inverse=True)
        g = np.minimum(np.searchsorted(uniq, it), uniq.size - 1)  # (T,)
        hit = uniq[g] == it
        row, g = row[hit], g[hit]
        # each distinct item's columns, contiguous: order[cstart[g] : cstart[g] + cnt[g]]
        order = np.argsort(col_of, kind="stable")
        cnt = np.bincount(col_of, minlength=uniq.size)
        cstart = np.cumsum(cnt) - cnt
        m = cnt[g]  # (T',) columns holding that item
        k = int(m.sum())
        if k == 0:
            return out
        first = np.repeat(cstart[g] - (np.cumsum(m) - m), m)
        out[np.repeat(row, m), order[first + np.arange(k)]] = True
        return out


def seed_sets(ds: EncodedDataset, splits: tuple[Split, ...] = (Split.TRAIN,)) -> SeedSets:
    """Distinct clickers of every item in ``splits`` (CSR by item)."""
    offsets, users = seed_csr(ds, splits)
    return SeedSets(offsets=offsets, users=users, n_users=ds.n_users)


def _sample_negatives(
    users: np.ndarray,
    n_items: int,
    probs: np.ndarray,
    forbidden: np.ndarray,
    ratio: int,
    rng: np.random.Generator,
    rounds: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """``ratio`` items per user from ``probs`` avoiding sorted ``forbidden`` user*n_items+item."""
    u = np.repeat(users, ratio)
    items = rng.choice(n_items, size=u.size, p=probs)
    bad = np.zeros(u.size, dtype=bool)
    for _ in range(rounds + 1):
        _mark_forbidden(u, items, n_items, forbidden, bad)
        if not bad.any():
            break
        items[bad] = rng.choice(n_items, size=int(bad.sum()), p=probs)
    if not bad.any():
        return u, items
    keep = ~bad
    return u[keep], items[keep]


def _mark_forbidden(
    u: np.ndarray,
    items: np.ndarray,
    n_items: int,
    forbidden: np.ndarray,
    out: np.ndarray,
    chunk: int = 1 << 20,
) -> None:
    """``out[j] = u[j] * n_items + items[j] in forbidden`` (sorted), chunk by chunk (the
    int64 keys and positions of all pairs at once were the peak of an epoch's examples)."""
    if forbidden.size == 0:
        out[:] = False
        return
    last = forbidden.size - 1
    for lo in range(0, u.size, chunk):
        keys = u[lo : lo + chunk] * n_items + items[lo : lo + chunk]
        pos = np.minimum(np.searchsorted(forbidden, keys), last)
        out[lo : lo + chunk] = forbidden[pos] == keys


def negative_distribution(ds: EncodedDataset, seeds: SeedSets, how: str) -> np.ndarray:
    """Sampling probabilities over items with seeds: 'uniform', 'popularity' (proportional
    to seed count) or 'log_uniform' (eq. 3 of the popularity rank, :mod:`ralm.user.sampler`,
    renormalised over the items with seeds)."""
    counts = seeds.counts.astype(np.float64)
    if how == "uniform":
        w = (counts > 0).astype(np.float64)
    elif how == "popularity":
        w = counts
    elif how == "log_uniform":
        from ralm.user.sampler import LogUniformSampler

        rank = np.argsort(np.argsort(-counts, kind="stable"), kind="stable")  # 0 = most seeds
        w = LogUniformSampler(counts.size, rank).probs() * (counts > 0)
    else:
        raise ValueError(f"unknown negative sampling {how!r} (uniform | popularity | log_uniform)")
    if w.sum() <= 0:
        raise ValueError(f"dataset {ds.name} has no item with seeds: cannot sample negatives")
    return w / w.sum()


def training_examples(
    ds: EncodedDataset,
    seeds: SeedSets,
    neg_ratio: int,
    neg_sampling: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled (users, items, labels float32) of TRAIN clicks plus sampled negatives."""
    pos = click_keys(ds, (Split.TRAIN,))
    pu, pi = np.divmod(pos, ds.n_items)
    probs = negative_distribution(ds, seeds, neg_sampling)
    nu, ni = _sample_negatives(pu, ds.n_items, probs, pos, neg_ratio, rng)
    del pos  # each temporary goes as soon as it is used: these are the epoch's largest arrays
    n_pos = pu.size
    users = np.concatenate([pu, nu])
    del pu, nu
    items = np.concatenate([pi, ni])
    del pi, ni
    labels = np.zeros(users.size, np.float32)
    labels[:n_pos] = 1.0
    perm = rng.permutation(users.size)
    users = users[perm]
    items = items[perm]
    return users, items, labels[perm]


def uniform_negatives(
    ds: EncodedDataset,
    seeds: SeedSets,
    users: np.ndarray,
    neg_ratio: int,
    rng: np.random.Generator,
    split: Split = Split.VALID,
) -> tuple[np.ndarray, np.ndarray]:
    """``neg_ratio`` negatives per user of ``users`` (one per click), items drawn uniformly
    among the items with seeds and never clicked by the user in TRAIN or ``split``."""
    forbidden = click_keys(ds, (Split.TRAIN, split))
    probs = negative_distribution(ds, seeds, "uniform")
    return _sample_negatives(users, ds.n_items, probs, forbidden, neg_ratio, rng)


def validation_examples(
    ds: EncodedDataset,
    seeds: SeedSets,
    neg_ratio: int,
    neg_sampling: str,
    rng: np.random.Generator,
    max_pos: int = 0,
    split: Split = Split.VALID,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, labels) of ``split`` clicks on items with seeds, plus negatives."""
    pos = click_keys(ds, (split,))
    pu, pi = pos // ds.n_items, pos % ds.n_items
    has_seeds = seeds.counts[pi] > 0
    pu, pi = pu[has_seeds], pi[has_seeds]
    if max_pos and pu.size > max_pos:
        pick = np.sort(rng.choice(pu.size, max_pos, replace=False))
        pu, pi = pu[pick], pi[pick]
    forbidden = click_keys(ds, (Split.TRAIN, split))
    probs = negative_distribution(ds, seeds, neg_sampling)
    nu, ni = _sample_negatives(pu, ds.n_items, probs, forbidden, neg_ratio, rng)
    users = np.concatenate([pu, nu])
    items = np.concatenate([pi, ni])
    labels = np.concatenate([np.ones(pu.size, np.float32), np.zeros(nu.size, np.float32)])
    return users, items, labels
