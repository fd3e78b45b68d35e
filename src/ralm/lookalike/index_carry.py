"""What a new build carries over from the previous index: warm starts and first-seen times.

Split out of :mod:`ralm.lookalike.index_builder`. ``prev`` (see :data:`Prev`) is the previous
clustering of the items being built: a :class:`~ralm.lookalike.index_table.SeedIndex` or
:class:`~ralm.lookalike.index_table.IndexUpdate` (whose rows are matched by item id), or
:class:`~ralm.lookalike.clustering.SeedClusters` / raw centroids (matched by position).
"""

from __future__ import annotations

import logging

import numpy as np

from ralm.lookalike.clustering import SeedClusters
from ralm.lookalike.index_table import IndexUpdate, SeedIndex

__all__ = ["Prev"]

# the builder's logger: these helpers were split out of it
log = logging.getLogger("ralm.lookalike.index_builder")

Prev = SeedIndex | IndexUpdate | SeedClusters | np.ndarray | None


def _rows_by_id(
    prev: SeedIndex | IndexUpdate, item_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(js, rows)`` int64: positions in ``item_ids`` of the items ``prev`` holds and their
    rows there (matched by id), or None when it holds none of them."""
    if prev.n_items == 0:
        return None
    if isinstance(prev, SeedIndex):
        row_of = prev.row_of
    else:
        row_of = {str(i): r for r, i in enumerate(prev.item_ids.tolist())}
    pos = [(j, row_of[i]) for j, i in enumerate(item_ids.tolist()) if i in row_of]
    if not pos:
        return None
    js, rows = (np.asarray(a, dtype=np.int64) for a in zip(*pos, strict=True))
    return js, rows


def _warm_start(
    prev: Prev, item_ids: np.ndarray, k: int, h: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(I, k, h) centroids and (I, k) mask to start from: by id for an index or update,
    by position for clusters or a raw array; None where nothing usable."""
    if prev is None:
        return None, None
    if isinstance(prev, SeedIndex | IndexUpdate):
        if prev.n_items == 0 or prev.centroids.shape[1:] != (k, h):
            return None, None
        found = _rows_by_id(prev, item_ids)
        if found is None:
            return None, None
        js, rows = found
        init = np.zeros((item_ids.size, k, h), dtype=np.float32)
        init_m = np.zeros((item_ids.size, k), dtype=bool)
        if isinstance(prev, SeedIndex):
            got = prev.gather(rows, ("centroids", "mask"))
            init[js], init_m[js] = got["centroids"], got["mask"]
        else:
            init[js], init_m[js] = prev.centroids[rows], prev.mask[rows]
        return (init, init_m) if init_m.any() else (None, None)
    if isinstance(prev, SeedClusters):
        init_c, init_m2 = prev.centroids, prev.mask
    else:
        init_c, init_m2 = np.asarray(prev, dtype=np.float32), None
    if init_c.shape[1] != k:
        log.warning("warm start ignored: previous index has k=%d, asked k=%d", init_c.shape[1], k)
        return None, None
    return init_c, init_m2


def _first_seen_rows(first_seen: np.ndarray | None, n_items: int) -> np.ndarray:
    """float64 (I,) first-click times, 0 where not known; a clear error on a bad array."""
    if first_seen is None:
        return np.zeros(n_items, dtype=np.float64)
    out = np.asarray(first_seen, dtype=np.float64)
    if out.shape != (n_items,):
        raise ValueError(f"first_seen has shape {out.shape}, expected ({n_items},)")
    if not np.isfinite(out).all():
        raise ValueError("first_seen has non-finite values (use 0 for a time not known)")
    return out


def _earliest_first_seen(prev: Prev, ids: np.ndarray, given: np.ndarray | None) -> np.ndarray:
    """Each item's earliest known first-click time: ``given`` (0 = not known) or the one
    its row of ``prev`` (an index or update, by id) recorded, whichever is earlier."""
    out = _first_seen_rows(given, ids.size).copy()
    if not isinstance(prev, SeedIndex | IndexUpdate):
        return out
    found = _rows_by_id(prev, ids)
    if found is None:
        return out
    js, rows = found
    old = (
        prev.gather(rows, ("first_seen",))["first_seen"]
        if isinstance(prev, SeedIndex)
        else prev.first_seen[rows]
    )
    cur = out[js]
    known = old > 0
    out[js] = np.where(known & ((cur <= 0) | (old < cur)), old, cur)
    return out
