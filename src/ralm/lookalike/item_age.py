"""Item ages for the audience prior's young-item rule (issue 13: new items against warm ones).

The audience prior ``gamma log(1 + n)`` ranks an item by how many users clicked it. A new
item cannot have many clicks yet, whatever its audience, so against mature items it loses
on the prior alone. The young-item rule (:meth:`ralm.lookalike.model.LookalikeModel.young_factor`)
counts a young item by its click rate instead: ``n * clamp(young_age / age, 1, young_boost)``,
with ``age`` the time since the item's first click and ``young_age`` the age at which items
are typically clicked (the median, over TRAIN clicks, of the clicked item's age at the
click). Items at least ``young_age`` old are counted as before.

This module derives those times from a dataset: first-click times, ages at a clock, and
``young_age``. Data whose timestamps were made up from file order has no usable time: no
young-age is derived then, and the rule stays off.
"""

from __future__ import annotations

import logging

import numpy as np

from ralm.data.encoded import EncodedDataset, Split
from ralm.lookalike.config import LookalikeConfig

log = logging.getLogger(__name__)


def time_usable(ds: EncodedDataset) -> bool:
    """True when the dataset's timestamps are real times (the split recorded it, or, for
    data prepared before it did, the timestamps are not all equal)."""
    split = ds.extra.get("split", {}) if isinstance(ds.extra, dict) else {}
    if isinstance(split, dict) and "time_usable" in split:
        return bool(split["time_usable"])
    ts = np.asarray(ds.interactions.ts)
    return bool(ts.size > 1 and ts.max() > ts.min())


def first_click_times(
    ds: EncodedDataset, splits: tuple[Split, ...] = (Split.TRAIN,)
) -> tuple[np.ndarray, float]:
    """float64 (n_items,) time of each item's first click in ``splits`` (0 = no click there:
    "ancient", so never young) and the clock: the last click time of those splits."""
    it = ds.interactions
    m = it.click_mask(*splits)
    first = np.full(ds.n_items, np.inf)
    items, ts = np.asarray(it.item)[m], np.asarray(it.ts, dtype=np.float64)[m]
    np.minimum.at(first, items, ts)
    first[~np.isfinite(first)] = 0.0
    clock = float(ts.max()) if ts.size else 0.0
    return first, clock


def item_ages(ds: EncodedDataset, splits: tuple[Split, ...] = (Split.TRAIN,)) -> np.ndarray:
    """float64 (n_items,) seconds from each item's first click in ``splits`` to the last
    click of those splits (items without a click there are as old as the clock)."""
    first, clock = first_click_times(ds, splits)
    return np.maximum(clock - first, 0.0)


def typical_item_age(ds: EncodedDataset) -> float:
    """Median age (seconds since its first TRAIN click) of the clicked item over TRAIN
    clicks; 0 when the data has no usable time or every click is an item's first."""
    if not time_usable(ds):
        return 0.0
    it = ds.interactions
    m = it.click_mask(Split.TRAIN)
    if not m.any():
        return 0.0
    first, _ = first_click_times(ds, (Split.TRAIN,))
    items, ts = np.asarray(it.item)[m], np.asarray(it.ts, dtype=np.float64)[m]
    return max(float(np.median(ts - first[items])), 0.0)


def with_young_age(cfg: LookalikeConfig, ds: EncodedDataset) -> LookalikeConfig:
    """``cfg`` with ``young_age`` set from ``ds`` (:func:`typical_item_age`) when it is 0 and
    the rule is on (``young_boost > 1``); unchanged otherwise."""
    if cfg.young_age > 0 or cfg.young_boost <= 1.0:
        return cfg
    age = typical_item_age(ds)
    if age <= 0:
        log.info("stage 2: no usable click times, the young-item rule stays off")
        return cfg
    log.info(
        "stage 2: young-item rule: items younger than %.1f days (the median age of a clicked "
        "item) count their seeds up to %gx",
        age / 86400.0,
        cfg.young_boost,
    )
    return cfg.model_copy(update={"young_age": age})
