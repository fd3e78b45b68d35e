"""Fast path: synthetic data straight to an :class:`EncodedDataset` (no Parquet round trip).

Produces the same fields ``dataset.toml`` of :func:`ralm.data.synth_parquet.write_parquet`
declares, in the same order: ``gender``, ``city``, ``age_bucket`` (univalent), ``tags``
(multivalent), ``age`` (continuous), then the derived ``history`` (item indices + 1 of
the user's distinct TRAIN clicks, ``item_history=True``) and ``categories`` (the
distinct topics of those TRAIN clicks, ``derived_from_items=True``, with the per-code
item counts and the item -> topic CSR that target exclusion uses). Codes: ``0`` = OOV/missing and
``vocabs[field][code - 1]`` is the raw string.

Splits: by default the items born late (``SynthData.item_is_new``) are the cold items
(instead of the random pick of ``SplitConfig.cold_item_frac``): their earliest
``cold_seed_frac`` clicks (rounded half up, at least one) are ``COLD_SEED``, the rest
``COLD_TEST``. Every other click is split by :func:`ralm.data.splits.assign_splits` with the
given :class:`~ralm.data.splits.SplitConfig` (per-user chronological by default).

Encoding follows :mod:`ralm.data.ingest` so the fast path and ``ralm data prepare`` on the
Parquet output agree: vocabularies are the values used by TRAIN users (users with a TRAIN
click), sorted; history and derived categories are distinct values sorted by code; age is
min-max normalised over TRAIN users (missing -> 0). Ids are ``str(index)``; every item
has a click, so ingestion numbers users and items exactly as the generator does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ralm.data.encoded import DerivedInfo, EncodedDataset, FieldInfo, Interactions, Split
from ralm.data.features import csr_distinct_counts, item_codes_csr, minmax_normalise
from ralm.data.splits import SplitConfig, assign_splits
from ralm.data.synth_sampling import sorted_unique
from ralm.data.synth_types import AGE_BUCKET_NAMES, GENDER_NAMES, SynthData

log = logging.getLogger(__name__)


def split_synth(
    data: SynthData, split: SplitConfig, natural_cold: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Split code per click, int8 (n_clicks,) aligned with ``data.click_*`` (ts order).

    Args:
        data: generated data.
        split: split configuration (method, fractions, seed, ``cold_seed_frac``).
        natural_cold: late-born items are the cold items (``split.cold_item_frac`` is
            then ignored); else ``assign_splits`` picks random cold items.
    """
    user, item, ts = data.click_user, data.click_item, data.click_ts
    label = np.ones(user.shape[0], dtype=np.int8)
    if not natural_cold:
        codes, extra = assign_splits(user, item, ts, label, data.n_items, split)
        return codes, {**extra, "cold": "random"}
    out = np.full(user.shape[0], int(Split.TRAIN), dtype=np.int8)
    cold = data.item_is_new[item]  # (n_clicks,)

    idx = np.flatnonzero(cold)  # cold rows, already in time order
    o = idx[np.argsort(item[idx], kind="stable")]  # by (item, ts)
    it = item[o]
    rank = np.arange(o.shape[0]) - np.searchsorted(it, it, side="left")  # rank within item
    cnt = np.bincount(it, minlength=data.n_items)
    n_seed = np.maximum(np.floor(cnt * split.cold_seed_frac + 0.5), 1)
    out[o] = np.where(rank < n_seed[it], int(Split.COLD_SEED), int(Split.COLD_TEST))

    warm = np.flatnonzero(~cold)
    warm_cfg = split.model_copy(update={"cold_item_frac": 0.0})
    out[warm], extra = assign_splits(
        user[warm], item[warm], ts[warm], label[warm], data.n_items, warm_cfg
    )
    counts = np.bincount(out, minlength=len(Split))
    extra.update(
        cold="new_items",
        n_cold_items=int(sorted_unique(it).shape[0]),
        counts={s.name.lower(): int(counts[s]) for s in Split},
    )
    return out, extra


def _encode(
    idx: np.ndarray, owner: np.ndarray, names: np.ndarray, train_users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Codes of name indices ``idx`` (-1 = missing) against the sorted vocabulary of the
    values owned by TRAIN users, as ingestion builds it. Returns (codes, vocab)."""
    used = np.zeros(names.shape[0], dtype=bool)
    sel = idx[(idx >= 0) & train_users[owner]]
    used[sel] = True
    kept = np.flatnonzero(used)
    kept = kept[np.argsort(names[kept], kind="stable")]  # sorted raw strings
    code_of = np.zeros(names.shape[0] + 1, dtype=np.int64)  # last slot: missing -> 0
    code_of[kept] = np.arange(1, kept.shape[0] + 1)
    return code_of[np.where(idx >= 0, idx, names.shape[0])], names[kept]


def csr_distinct(
    rows: np.ndarray, values: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the distinct (row, value) pairs, values sorted inside each row.

    Same result as ``csr_from_pairs(..., unique=True)`` of :mod:`ralm.data.features`,
    with a sort-based dedupe (see :func:`ralm.data.synth_sampling.sorted_unique`).
    """
    width = int(values.max()) + 1 if values.size else 1
    key = sorted_unique(rows.astype(np.int64) * width + values)  # (nnz,) by (row, value)
    offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(key // width, minlength=n_rows), out=offsets[1:])
    return offsets, key % width


def _str_ids(n: int) -> np.ndarray:
    """Raw ids "0".."n-1" as a compact fixed-width str array."""
    return np.arange(n).astype(f"<U{max(1, len(str(max(n - 1, 0))))}")


def to_encoded(
    data: SynthData, split: SplitConfig | None = None, natural_cold: bool = True
) -> EncodedDataset:
    """Encode generated data directly (the benchmarks' fast path).

    Args:
        data: output of :func:`ralm.data.synth.generate`.
        split: split configuration (default :class:`~ralm.data.splits.SplitConfig`).
        natural_cold: late-born items are the cold items (see :func:`split_synth`).
    """
    split = split or SplitConfig()
    n_users, n_items = data.n_users, data.n_items
    codes, split_extra = split_synth(data, split, natural_cold)  # (n_clicks,)
    train = codes == int(Split.TRAIN)
    cu, ci = data.click_user[train], data.click_item[train]  # TRAIN clicks
    train_users = np.bincount(cu, minlength=n_users) > 0  # (n_users,)
    users = np.arange(n_users)

    fields: list[FieldInfo] = []
    univalent: dict[str, np.ndarray] = {}
    multivalent: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    vocabs: dict[str, np.ndarray] = {}
    for name, idx, names in (
        ("gender", data.gender.astype(np.int64), np.asarray(GENDER_NAMES)),
        ("city", data.city, data.city_names),
        ("age_bucket", data.age_bucket(), np.asarray(AGE_BUCKET_NAMES)),
    ):
        univalent[name], vocabs[name] = _encode(idx, users, names, train_users)
        fields.append(FieldInfo(name, "univalent", vocab_size=len(vocabs[name]) + 1))

    tag_off, tag_val = data.tags
    tag_user = np.repeat(users, np.diff(tag_off))  # (nnz,)
    tag_codes, vocabs["tags"] = _encode(tag_val, tag_user, data.tag_names, train_users)
    multivalent["tags"] = csr_distinct(tag_user, tag_codes, n_users)
    fields.append(FieldInfo("tags", "multivalent", vocab_size=len(vocabs["tags"]) + 1))

    age, lo, hi = minmax_normalise(data.age.astype(np.float64), np.flatnonzero(train_users))
    fields.append(FieldInfo("age", "continuous", min=lo, max=hi))

    item_ids = _str_ids(n_items)
    multivalent["history"] = csr_distinct(cu, ci + 1, n_users)
    vocabs["history"] = item_ids
    fields.append(FieldInfo("history", "multivalent", vocab_size=n_items + 1, item_history=True))

    # categories: vocabulary = topics of the items with a TRAIN click (as ingestion builds it)
    trained = np.bincount(ci, minlength=n_items) > 0  # (n_items,)
    items = np.arange(n_items)
    item_cat, vocabs["categories"] = _encode(data.item_topic, items, data.topic_names, trained)
    pair = sorted_unique(cu * n_items + ci)  # distinct (user, item) TRAIN clicks
    pu, pi = pair // n_items, pair % n_items
    cat_off, cat_val, cat_cnt = csr_distinct_counts(pu, item_cat[pi], n_users)
    multivalent["categories"] = (cat_off, cat_val)
    item_off, item_val = item_codes_csr(items, item_cat, n_items)
    derived = {"categories": DerivedInfo(cat_cnt, item_off, item_val)}
    fields.append(
        FieldInfo(
            "categories",
            "multivalent",
            vocab_size=len(vocabs["categories"]) + 1,
            derived_from_items=True,
        )
    )

    log.info("encoded %s: %s", data.config.name, split_extra.get("counts"))
    return EncodedDataset(
        name=data.config.name,
        user_ids=_str_ids(n_users),
        item_ids=item_ids,
        fields=fields,
        univalent=univalent,
        multivalent=multivalent,
        continuous=age[:, None],
        interactions=Interactions(
            user=data.click_user,
            item=data.click_item,
            ts=data.click_ts,
            label=np.ones(data.n_clicks, dtype=np.int8),
            split=codes,
        ),
        vocabs=vocabs,
        extra={
            "source": "ralm.data.synth",
            "split": split_extra,
            "synth": data.config.model_dump(),
            "truth_dir": "truth",
        },
        derived=derived,
    )


def write_truth(data: SynthData, root: Path) -> Path:
    """Save the latent truth (for tests and analyses) as ``root/truth/*.npy``."""
    out = root / "truth"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("user_group", "user_topic", "item_topic", "item_birth_ts", "item_is_new"):
        np.save(out / f"{name}.npy", getattr(data, name))
    return out


def write_encoded(
    data: SynthData, out: str | Path, split: SplitConfig | None = None, natural_cold: bool = True
) -> Path:
    """Encode ``data`` and save it as an encoded dataset folder (plus ``truth/``).

    The folder is replaced atomically when it holds an older encoded dataset.

    Raises:
        ConfigError: ``out`` exists, is not empty and is not an encoded dataset.
    """
    from ralm.data.prepare import write_dataset  # the data layer's atomic writer

    root = write_dataset(to_encoded(data, split, natural_cold), out)
    write_truth(data, root)
    return root
