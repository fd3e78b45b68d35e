"""Train/valid/test splits and the item cold-start hold-out. Seeded, vectorised.

All functions take interaction arrays **sorted by timestamp** (ties in input order) and
return one :class:`~ralm.data.encoded.Split` code per row.

Methods (``SplitConfig.method``):

- ``per_user``: chronological per user; the last ``test_frac`` of each user's rows go to
  TEST, the ``valid_frac`` before them to VALID. Counts are rounded half up and reduced so
  every user keeps at least one TRAIN row.
- ``global_time``: one time cut for everybody; the latest ``test_frac`` of rows (by time)
  are TEST, the ``valid_frac`` before them VALID. Rows sharing the cut timestamp go to the
  later split, so no TRAIN row is later than a VALID/TEST row.
- ``random_per_user``: like ``per_user`` but each user's held-out rows are a seeded random
  subset instead of the latest ones.
- ``given``: rows from the separate test file are TEST; VALID is the last ``valid_frac`` of
  each user's remaining rows (chronological).

Item cold start (any method, ``cold_item_frac > 0``): a seeded fraction of the items with at
least ``cold_min_clicks`` clicks is held out entirely: none of their rows is TRAIN, VALID or
TEST. Each cold item's earliest ``cold_seed_frac`` of rows are COLD_SEED (its seed users),
the rest COLD_TEST. The other splits are computed on the remaining rows.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ralm.common.keys import contains
from ralm.data.encoded import Split

log = logging.getLogger(__name__)

SplitMethod = Literal["per_user", "global_time", "random_per_user", "given"]
ValidFrom = Literal["auto", "train-tail", "random", "given-file", "none"]
DEFAULT_COLD_ITEM_FRAC = 0.1  # derived splits; a given split holds out no cold items


class SplitConfig(BaseModel):
    """How interactions are split (stored in ``extra["split"]`` of the dataset).

    Args:
        method: per_user | global_time | random_per_user | given.
        valid_frac: fraction of rows (per user, or of all rows for global_time) in VALID.
        test_frac: fraction in TEST (ignored by ``given``).
        valid_from: where VALID comes from (see module docstring); ``auto`` = a given
            validation file if there is one, else ``train-tail`` when the data has usable
            time, else ``random``.
        fold_valid: VALID is drawn for early stopping only and then folded back: derived
            features use TRAIN + VALID clicks and :func:`ralm.data.clicks.fit_splits`
            gives ``(TRAIN, VALID)`` for the final fit and the seeds.
        cold_item_frac: fraction of eligible items held out as cold items (0 = none);
            None = 0.1 for derived splits and 0 for ``given`` (a given split stays as given).
        cold_min_clicks: items need at least this many clicks to be eligible as cold.
        cold_seed_frac: fraction of a cold item's earliest rows that become COLD_SEED.
        seed: random seed (cold items, random_per_user, random VALID).
    """

    model_config = ConfigDict(extra="forbid")

    method: SplitMethod = Field(default="per_user", description="Split method.")
    valid_frac: float = Field(default=0.1, ge=0.0, lt=1.0, description="VALID fraction.")
    test_frac: float = Field(default=0.1, ge=0.0, lt=1.0, description="TEST fraction.")
    valid_from: ValidFrom = Field(
        default="auto",
        description="VALID source: auto | train-tail (each user's latest rows before TEST) | "
        "random (seeded per-user sample) | given-file (a validation file) | none.",
    )
    fold_valid: bool = Field(
        default=False,
        description="Fold VALID back after early stopping: history features, final fit and "
        "seeds use TRAIN + VALID.",
    )
    cold_item_frac: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Cold item fraction (default: 0.1, but 0 for the given split).",
    )
    cold_min_clicks: int = Field(
        default=10, ge=2, description="Min clicks of a cold-item candidate."
    )
    cold_seed_frac: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="COLD_SEED share per item."
    )
    seed: int = Field(default=0, description="Random seed.")

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.valid_frac + self.test_frac >= 1.0:
            raise ValueError("valid_frac + test_frac must be < 1")
        return self

    @property
    def cold_fraction(self) -> float:
        """The cold item fraction in effect (``cold_item_frac`` with its default resolved)."""
        if self.cold_item_frac is not None:
            return self.cold_item_frac
        return 0.0 if self.method == "given" else DEFAULT_COLD_ITEM_FRAC


def rank_within_groups(groups: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each row inside its group, by ``key`` (default: row order)."""
    n = groups.shape[0]
    # both sorts are stable: ties keep row order
    order = np.argsort(groups, kind="stable") if key is None else np.lexsort((key, groups))
    g = groups[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1] if n else np.zeros(0, np.int64)
    first = np.repeat(start, np.diff(np.r_[start, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - first
    return rank


def _holdout_counts(n: np.ndarray, valid_frac: float, test_frac: float) -> tuple[np.ndarray, ...]:
    """Per-group (n_valid, n_test), rounded half up, leaving >= 1 TRAIN row."""
    n_test = np.floor(n * test_frac + 0.5).astype(np.int64)
    n_valid = np.floor(n * valid_frac + 0.5).astype(np.int64)
    excess = np.maximum(n_test + n_valid - (n - 1), 0)
    cut_valid = np.minimum(excess, n_valid)
    n_valid -= cut_valid
    n_test -= np.minimum(excess - cut_valid, n_test)
    return n_valid, n_test


def _per_user(
    user: np.ndarray, rows: np.ndarray, cfg: SplitConfig, rng: np.random.Generator, rand: bool
) -> np.ndarray:
    """Split codes for ``rows`` (indices into the time-sorted arrays)."""
    u = user[rows]
    key = rng.random(rows.size) if rand else None
    rank = rank_within_groups(u, key)  # 0 = earliest (or random order)
    counts = np.bincount(u, minlength=int(u.max()) + 1 if u.size else 0)
    n_valid, n_test = _holdout_counts(counts, cfg.valid_frac, cfg.test_frac)
    from_end = counts[u] - 1 - rank  # 0 = last row of the user
    out = np.full(rows.size, int(Split.TRAIN), dtype=np.int8)
    out[from_end < n_test[u]] = int(Split.TEST)
    out[(from_end >= n_test[u]) & (from_end < n_test[u] + n_valid[u])] = int(Split.VALID)
    return out


def _global_time(ts: np.ndarray, rows: np.ndarray, cfg: SplitConfig) -> tuple[np.ndarray, dict]:
    t = ts[rows]  # already sorted
    n = t.size
    out = np.full(n, int(Split.TRAIN), dtype=np.int8)
    cuts: dict[str, int | None] = {"valid_from_ts": None, "test_from_ts": None}
    if n == 0:
        return out, cuts
    i_test = int(np.floor(n * (1 - cfg.test_frac)))
    i_valid = int(np.floor(n * (1 - cfg.test_frac - cfg.valid_frac)))
    if cfg.test_frac > 0 and i_test < n:
        cuts["test_from_ts"] = int(t[i_test])
    if cfg.valid_frac > 0 and i_valid < n:
        cuts["valid_from_ts"] = int(t[i_valid])
    if cuts["valid_from_ts"] is not None:
        out[t >= cuts["valid_from_ts"]] = int(Split.VALID)
    if cuts["test_from_ts"] is not None:
        out[t >= cuts["test_from_ts"]] = int(Split.TEST)
    return out, cuts


def choose_cold_items(
    item: np.ndarray, label: np.ndarray, n_items: int, cfg: SplitConfig, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices of the held-out cold items (seeded)."""
    if cfg.cold_fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    clicks = np.bincount(item[label > 0], minlength=n_items)
    eligible = np.flatnonzero(clicks >= cfg.cold_min_clicks)
    n_cold = int(np.floor(eligible.size * cfg.cold_fraction + 0.5))
    if n_cold == 0:
        log.warning("no cold items: %d items have >= %d clicks", eligible.size, cfg.cold_min_clicks)
    return np.sort(rng.choice(eligible, n_cold, replace=False)).astype(np.int64)


def _random_valid(
    user: np.ndarray,
    rows: np.ndarray,
    n_rows_of_user: np.ndarray,
    valid_frac: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Bool mask over ``rows``: a seeded random ``valid_frac`` of each user's rows -> VALID.

    ``n_rows_of_user`` (per user) sets the count, rounded half up; every user keeps at least
    one of ``rows`` outside VALID.
    """
    u = user[rows]
    rank = rank_within_groups(u, rng.random(rows.size))  # random order inside each user
    avail = np.bincount(u, minlength=n_rows_of_user.size)
    n_valid = np.floor(n_rows_of_user * valid_frac + 0.5).astype(np.int64)
    n_valid = np.minimum(n_valid, np.maximum(avail - 1, 0))
    return rank < n_valid[u]


def resolve_valid_from(cfg: SplitConfig, has_valid_file: bool, time_usable: bool) -> str:
    """The VALID source in effect: ``auto`` resolved (file, else time tail, else random)."""
    vf = cfg.valid_from
    if vf == "auto":
        vf = "given-file" if has_valid_file else "train-tail" if time_usable else "random"
    if vf == "given-file" and not has_valid_file:
        raise ValueError("valid_from 'given-file' needs a validation interactions file")
    return vf


def assign_splits(
    user: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    label: np.ndarray,
    n_items: int,
    cfg: SplitConfig,
    given_test: np.ndarray | None = None,
    given_valid: np.ndarray | None = None,
    time_usable: bool | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Split codes int8 (n,) for time-sorted interactions, and the parameters for ``extra``.

    Args:
        user, item, ts, label: int arrays (n,), sorted by ``ts``.
        n_items: number of items (for the cold-item draw).
        cfg: the split configuration.
        given_test: bool (n,) rows that came from the test file (method ``given``).
        given_valid: bool (n,) rows that came from a validation file (``given-file``).
        time_usable: the timestamps are real times (False when they were made up from file
            order); None = usable unless all timestamps are equal.
    """
    if ts.size > 1 and np.any(ts[1:] < ts[:-1]):
        raise ValueError("assign_splits needs interactions sorted by timestamp")
    if cfg.method == "given" and given_test is None:
        raise ValueError("split method 'given' needs a separate test interactions file")
    if time_usable is None:
        time_usable = bool(ts.size < 2 or ts[-1] > ts[0])
    valid_from = resolve_valid_from(cfg, given_valid is not None, time_usable)
    if cfg.valid_from == "auto" and valid_from == "random":
        log.warning("the data has no usable time: VALID is a random sample of each user's rows")
    rng = np.random.default_rng(cfg.seed)
    n = user.shape[0]
    split = np.full(n, int(Split.TRAIN), dtype=np.int8)
    cold = choose_cold_items(item, label, n_items, cfg, rng)
    is_cold = contains(cold, item)  # cold is sorted
    cold_rows = np.flatnonzero(is_cold)
    if cold_rows.size:
        rank = rank_within_groups(item[cold_rows])  # time order inside each cold item
        count = np.bincount(item[cold_rows], minlength=n_items)[item[cold_rows]]
        n_seed = np.maximum(np.floor(count * cfg.cold_seed_frac + 0.5), 1)
        split[cold_rows] = np.where(rank < n_seed, int(Split.COLD_SEED), int(Split.COLD_TEST))
    warm = np.flatnonzero(~is_cold)
    extra: dict[str, Any] = {
        **cfg.model_dump(),
        "n_cold_items": int(cold.size),
        "valid_source": valid_from,
        "time_usable": time_usable,
    }
    if valid_from == "given-file":
        assert given_valid is not None
        split[warm[given_valid[warm]]] = int(Split.VALID)
        warm = warm[~given_valid[warm]]
    # the method's own VALID only for train-tail; otherwise VALID is drawn below (or none)
    own = cfg if valid_from == "train-tail" else cfg.model_copy(update={"valid_frac": 0.0})
    if cfg.method in ("per_user", "random_per_user"):
        split[warm] = _per_user(user, warm, own, rng, rand=cfg.method == "random_per_user")
    elif cfg.method == "global_time":
        split[warm], cuts = _global_time(ts, warm, own)
        extra.update(cuts)
    else:  # given
        assert given_test is not None
        test_rows = warm[given_test[warm]]
        warm = warm[~given_test[warm]]
        split[test_rows] = int(Split.TEST)
        split[warm] = _per_user(user, warm, own.model_copy(update={"test_frac": 0.0}), rng, False)
    if valid_from == "random" and cfg.valid_frac > 0 and warm.size:
        n_of_user = np.bincount(user[warm], minlength=int(user.max()) + 1)
        rest = warm[split[warm] == int(Split.TRAIN)]
        split[rest[_random_valid(user, rest, n_of_user, cfg.valid_frac, rng)]] = int(Split.VALID)
    counts = np.bincount(split, minlength=len(Split))
    extra["counts"] = {s.name.lower(): int(counts[s]) for s in Split}
    log.info("split %s (VALID: %s): %s", cfg.method, valid_from, extra["counts"])
    return split, extra


def cold_items(split: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Sorted indices of the items whose rows are COLD_SEED / COLD_TEST."""
    m = (split == int(Split.COLD_SEED)) | (split == int(Split.COLD_TEST))
    return np.unique(item[m])
