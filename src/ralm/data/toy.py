"""A small in-memory :class:`EncodedDataset` with planted structure, for tests and examples.

Users belong to one of ``n_groups`` latent taste groups; the univalent field ``group_hint``
reveals the group for a fraction of users, ``age`` (continuous) is correlated with it, and
each group clicks mostly items of its own topic. The item-history field holds every user's
TRAIN clicks (item index + 1). Splits: per-user chronological (last clicks -> VALID/TEST)
plus a set of cold items whose clicks are split into COLD_SEED (earliest half) and COLD_TEST.
With ``item_attributes=True`` a multivalent ``topics`` field derived from the TRAIN clicks'
item attributes is added (``derived_from_items``, with its exclusion info): item ``j`` carries
code ``topic(j) + 1`` and the "bucket" code ``n_groups + 1 + j % 7``.
"""

from __future__ import annotations

import numpy as np

from ralm.common.keys import pair_keys
from ralm.data.batching import gather_csr
from ralm.data.encoded import DerivedInfo, EncodedDataset, FieldInfo, Interactions, Split
from ralm.data.features import csr_distinct_counts, csr_from_pairs, item_codes_csr


def make_toy_dataset(
    n_users: int = 300,
    n_items: int = 60,
    n_groups: int = 3,
    clicks_per_user: int = 12,
    n_cold_items: int = 6,
    p_in_group: float = 0.85,
    hint_rate: float = 0.7,
    seed: int = 0,
    item_attributes: bool = False,
) -> EncodedDataset:
    """Build a toy dataset (a few ms). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, n_groups, n_users)  # latent taste of each user
    topic = np.arange(n_items) % n_groups  # latent topic of each item
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.7  # Zipf-like, shuffled over items
    popularity = popularity[rng.permutation(n_items)]

    users, items = [], []
    for g in range(n_groups):
        members = np.flatnonzero(group == g)
        in_items = np.flatnonzero(topic == g)
        out_items = np.flatnonzero(topic != g)
        p_in = popularity[in_items] / popularity[in_items].sum()
        p_out = popularity[out_items] / popularity[out_items].sum()
        n = members.size * clicks_per_user
        own = rng.random(n) < p_in_group
        chosen = np.where(own, rng.choice(in_items, n, p=p_in), rng.choice(out_items, n, p=p_out))
        users.append(np.repeat(members, clicks_per_user))
        items.append(chosen)
    user = np.concatenate(users)
    item = np.concatenate(items)
    # dedupe (user, item) pairs, then timestamps
    pair = pair_keys(user, item, n_items)
    user, item = pair // n_items, pair % n_items
    ts = rng.integers(1_000_000, 2_000_000, user.size)
    order = np.argsort(ts, kind="stable")
    user, item, ts = user[order], item[order], ts[order]

    split = np.full(user.size, int(Split.TRAIN), dtype=np.int8)
    # per-user chronological: last click -> TEST, second last -> VALID
    rank_from_end = np.zeros(user.size, dtype=np.int64)
    for u in range(n_users):
        idx = np.flatnonzero(user == u)
        rank_from_end[idx] = np.arange(idx.size)[::-1]
    split[rank_from_end == 0] = int(Split.TEST)
    split[rank_from_end == 1] = int(Split.VALID)
    # cold items: every click held out of training
    cold = rng.choice(n_items, n_cold_items, replace=False)
    for j in cold:
        idx = np.flatnonzero(item == j)  # already in time order
        half = idx.size // 2
        split[idx[:half]] = int(Split.COLD_SEED)
        split[idx[half:]] = int(Split.COLD_TEST)

    # features
    hint = np.where(rng.random(n_users) < hint_rate, group + 1, 0)  # 0 = OOV / unknown
    age = np.clip(group / max(n_groups - 1, 1) * 0.6 + rng.normal(0.2, 0.1, n_users), 0, 1)
    train = split == int(Split.TRAIN)
    hu, hi = user[train], item[train]
    offsets, values = csr_from_pairs(hu, hi + 1, n_users, unique=True)  # pairs are distinct

    fields = [
        FieldInfo("group_hint", "univalent", vocab_size=n_groups + 1),
        FieldInfo("history", "multivalent", vocab_size=n_items + 1, item_history=True),
        FieldInfo("age", "continuous", min=0.0, max=1.0),
    ]
    multivalent = {"history": (offsets, values)}
    vocabs = {
        "group_hint": np.asarray([f"g{g}" for g in range(n_groups)]),
        "history": np.asarray([f"i{j}" for j in range(n_items)]),
    }
    derived: dict[str, DerivedInfo] = {}
    if item_attributes:
        j = np.arange(n_items)
        item_off, item_val = item_codes_csr(
            np.r_[j, j], np.r_[topic + 1, n_groups + 1 + j % 7], n_items
        )
        codes, lengths = gather_csr(item_off, item_val, hi)  # TRAIN (user, item) are distinct
        t_off, t_val, t_cnt = csr_distinct_counts(np.repeat(hu, lengths), codes, n_users)
        fields.insert(
            2,
            FieldInfo("topics", "multivalent", vocab_size=n_groups + 8, derived_from_items=True),
        )
        multivalent["topics"] = (t_off, t_val)
        vocabs["topics"] = np.asarray(
            [f"t{g}" for g in range(n_groups)] + [f"b{b}" for b in range(7)]
        )
        derived["topics"] = DerivedInfo(t_cnt, item_off, item_val)
    return EncodedDataset(
        name="toy",
        user_ids=np.asarray([f"u{u}" for u in range(n_users)]),
        item_ids=np.asarray([f"i{j}" for j in range(n_items)]),
        fields=fields,
        univalent={"group_hint": hint.astype(np.int64)},
        multivalent=multivalent,
        continuous=age.astype(np.float32)[:, None],
        interactions=Interactions(
            user=user.astype(np.int64),
            item=item.astype(np.int64),
            ts=ts.astype(np.int64),
            label=np.ones(user.size, dtype=np.int8),
            split=split,
        ),
        vocabs=vocabs,
        extra={"toy": {"group": group.tolist(), "topic": topic.tolist(), "cold": cold.tolist()}},
        derived=derived,
    )
