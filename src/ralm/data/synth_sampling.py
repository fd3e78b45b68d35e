"""Vectorised sampling primitives of the synthetic generator.

* :func:`segment_keys` / :func:`draw_rows`: draw one category per row from a per-row
  categorical distribution with a single ``searchsorted`` over a flattened CDF (row ``r``'s
  CDF is shifted into ``(r, r + 1]``), so 9 M draws over 50 x 100 mixtures cost one pass.
* :func:`heavy_tailed_counts`: per-user click counts, log-normal activity, >= 1, capped,
  summing exactly to ``n_clicks``.
* :func:`unique_clicks`: draw (user, item) clicks, redrawing collisions until every user
  has exactly their count of distinct items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ralm.common.keys import contains
from ralm.data.synth_types import SynthConfig

log = logging.getLogger(__name__)


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int array (``np.unique`` without its hash path).

    numpy 2.4's ``np.unique`` hashes first; on 9 M distinct int64 keys that measured
    ~60x slower here than one sort plus a neighbour comparison.
    """
    s = np.sort(x)  # (n,)
    if s.shape[0] == 0:
        return s
    keep = np.empty(s.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def segment_keys(probs: np.ndarray) -> np.ndarray:
    """Flattened, row-shifted CDFs of a (R, K) row-stochastic matrix, float64 (R*K,).

    Entry ``r*K + j`` is ``r + sum(probs[r, :j+1])``; each row's last entry is exactly
    ``r + 1`` so a uniform draw never escapes its row.
    """
    r = probs.shape[0]
    cdf = np.cumsum(probs, axis=1)  # (R, K)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    return (cdf + np.arange(r, dtype=np.float64)[:, None]).ravel()  # (R*K,)


def draw_rows(keys: np.ndarray, rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """One category in ``0..k-1`` per entry of ``rows`` (int (n,)), from :func:`segment_keys`."""
    rows = np.asarray(rows, dtype=np.int64)
    pos = np.searchsorted(keys, rows + rng.random(rows.shape[0]), side="right")  # (n,)
    return np.clip(pos - rows * k, 0, k - 1)


def heavy_tailed_counts(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Clicks per user, int64 (n_users,): >= 1, <= ``cfg.click_cap``, sum == ``n_clicks``.

    Activity weights are log-normal (sigma ``clicks_sigma``); the ``n_clicks - n_users``
    clicks beyond the first are spread multinomially by activity, and any excess over
    the cap is re-spread over users below it.
    """
    n, cap = cfg.n_users, cfg.click_cap
    w = rng.lognormal(0.0, cfg.clicks_sigma, n)  # (n_users,)
    counts = 1 + rng.multinomial(cfg.n_clicks - n, w / w.sum()).astype(np.int64)
    for _ in range(50):
        excess = int(np.maximum(counts - cap, 0).sum())
        if excess == 0:
            break
        np.minimum(counts, cap, out=counts)
        room = np.flatnonzero(counts < cap)
        p = w[room] / w[room].sum()
        counts[room] += rng.multinomial(excess, p)
    excess = int(np.maximum(counts - cap, 0).sum())
    if excess:  # deterministic top-up of the rest (pathological configs only)
        np.minimum(counts, cap, out=counts)
        room = cap - counts
        before = np.cumsum(room) - room
        counts += np.clip(excess - before, 0, room)
    assert int(counts.sum()) == cfg.n_clicks
    return counts


def cover_items(
    counts: np.ndarray,
    user_topic: np.ndarray,
    item_topic: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One click per item so that no item is left without clicks, as sorted keys.

    Item ``j`` gets one of the click slots (``counts[u]`` slots per user ``u``) of a user
    whose favourite topic is ``j``'s topic, so the forced click follows the planted
    structure; if that topic has too few slots, a random free slot is used. Each slot is
    used once, so no user gets more forced clicks than their count.

    Returns:
        int64 keys ``user * n_items + item`` (sorted), one per item.
    """
    n_items = item_topic.shape[0]
    slot_user = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)  # (N,)
    perm = rng.permutation(slot_user.shape[0])
    n_topics = int(max(item_topic.max(), user_topic.max())) + 1
    small = np.int16 if n_topics < 2**15 else np.int64  # int16 keys: radix sort
    key = user_topic.astype(small)[slot_user[perm]]  # (N,) favourite topic of each slot
    slots = perm[np.argsort(key, kind="stable")]  # slots grouped by favourite topic
    seg_size = np.bincount(key, minlength=n_topics)  # (T,)
    seg_start = np.cumsum(seg_size) - seg_size  # (T,)
    item_order = np.argsort(item_topic, kind="stable")
    sizes = np.bincount(item_topic, minlength=n_topics)
    rank = np.empty(n_items, dtype=np.int64)  # rank of each item within its topic
    rank[item_order] = np.arange(n_items) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    ok = rank < seg_size[item_topic]
    chosen = np.full(n_items, -1, dtype=np.int64)
    chosen[ok] = slots[seg_start[item_topic[ok]] + rank[ok]]
    free = np.ones(slot_user.shape[0], dtype=bool)
    free[chosen[ok]] = False
    spare = rng.permutation(np.flatnonzero(free))
    chosen[~ok] = spare[: int((~ok).sum())]
    return np.sort(slot_user[chosen] * n_items + np.arange(n_items))


def unique_clicks(
    counts: np.ndarray,
    n_items: int,
    draw: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    rng: np.random.Generator,
    initial: np.ndarray | None = None,
    model_rounds: int = 20,
    max_rounds: int = 500,
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) clicks, exactly ``counts[u]`` items for user ``u``.

    Args:
        counts: int64 (n_users,) wanted distinct items per user (<= n_items).
        n_items: catalogue size.
        draw: ``draw(users (n,), rng) -> items (n,)``, the generative model.
        rng: random generator.
        initial: sorted distinct keys ``user * n_items + item`` already decided (counted
            in ``counts``), e.g. from :func:`cover_items`.
        model_rounds: redraw rounds from ``draw``; later rounds draw uniformly from the
            catalogue so heavy users whose favourite items are exhausted still finish.
        max_rounds: safety bound.

    Returns:
        ``(user, item)`` int64 arrays sorted by (user, item).
    """
    n_users = counts.shape[0]
    keys = np.zeros(0, dtype=np.int64) if initial is None else initial
    deficit = counts - np.bincount(keys // n_items, minlength=n_users)
    for r in range(max_rounds):
        users = np.repeat(np.arange(n_users, dtype=np.int64), deficit)  # (deficit.sum(),)
        uniform = r >= model_rounds
        items = rng.integers(0, n_items, users.shape[0]) if uniform else draw(users, rng)
        new = sorted_unique(users * n_items + items)  # distinct within this round
        new = new[~contains(keys, new)]
        keys = np.sort(np.concatenate([keys, new]))
        deficit = counts - np.bincount(keys // n_items, minlength=n_users)
        missing = int(deficit.sum())
        log.debug("click round %d: %d clicks still to draw", r, missing)
        if missing == 0:
            return keys // n_items, keys % n_items
    raise RuntimeError(f"could not draw distinct clicks in {max_rounds} rounds")
