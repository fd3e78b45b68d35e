"""The SQLite seed store's bulk import (bootstrap from a dataset of historical clicks).

Split out of :mod:`ralm.serve.store`: :class:`SQLiteBulkImport` is a mixin of
:class:`ralm.serve.store.SQLiteSeedStore` holding :meth:`~SQLiteBulkImport.bulk_import`, its
one-pass load into an empty store (resolved in numpy, secondary indexes rebuilt once) and the
general chunked upsert path. It runs on the store's write connection, under its write lock,
and hands out sequence numbers from the store's counter.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ralm.serve.store_schema import _SEED_INDEXES

__all__ = ["BULK_CACHE_KIB", "SQLiteBulkImport"]

BULK_CACHE_KIB = 512 * 1024  # page cache of a bulk import (SQLite default: 2 MiB)


class SQLiteBulkImport:
    """The bulk-import methods of :class:`ralm.serve.store.SQLiteSeedStore` (a mixin)."""

    # provided by SQLiteSeedStore
    max_seeds: int
    _w: sqlite3.Connection
    _wlock: threading.Lock
    _seq: int

    if TYPE_CHECKING:

        def _sync_seq(self, cur: sqlite3.Cursor) -> None: ...

        def _save_seq(self, cur: sqlite3.Cursor) -> None: ...

    def bulk_import(self, clicks: Iterable[tuple[str, str, float]], chunk: int = 200_000) -> int:
        """Load historical (user_id, item_id, ts) clicks fast (bootstrap from a dataset).

        Rows are upserted with ``executemany`` in chunks (a row older than or equal to the
        stored seed changes nothing), then the touched items are trimmed and recounted once
        at the end. The seeds equal those of one ``add_clicks`` call with the same rows.
        Returns the number of seed rows in the store afterwards.

        The write connection's page cache is raised to ``BULK_CACHE_KIB`` for the import
        (and restored after): with SQLite's 2 MiB default the four B-trees of ``seeds``
        thrash once they outgrow it (889k clicks: 213 s -> 61 s on 2 busy cores).
        """
        now = time.time()
        with self._wlock:
            (cache0,) = self._w.execute("PRAGMA cache_size").fetchone()
            self._w.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
            try:
                return self._bulk_import(clicks, chunk, now)
            finally:
                self._w.execute(f"PRAGMA cache_size = {int(cache0)}")

    def _bulk_import(self, clicks: Iterable[tuple[str, str, float]], chunk: int, now: float) -> int:
        """The body of :meth:`bulk_import` (under the write lock)."""
        cur = self._w.cursor()
        cur.execute("BEGIN IMMEDIATE")
        self._sync_seq(cur)  # another process may write the same file
        seq0 = self._seq
        try:
            (used,) = cur.execute(
                "SELECT EXISTS(SELECT 1 FROM seeds) OR EXISTS(SELECT 1 FROM items)"
            ).fetchone()
            if self._bulk_load_empty and not used:
                total = self._load_into_empty(cur, clicks, chunk, now)
            else:
                total = -1
                self._upsert_general(cur, clicks, chunk, now)
            self._save_seq(cur)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            self._seq = seq0
            raise
        if total < 0:
            (total,) = self._w.execute("SELECT COUNT(*) FROM seeds").fetchone()
        return int(total)

    _bulk_load_empty = True
    """Whether :meth:`bulk_import` into an empty store takes the one-pass load (tests and
    ``benchmarks/bench_store.py --bulk-general`` turn it off to compare with the general
    path)."""

    def _load_into_empty(
        self, cur: sqlite3.Cursor, clicks: Iterable[tuple[str, str, float]], chunk: int, now: float
    ) -> int:
        """:meth:`bulk_import` into an empty store, in one pass; returns the seed rows.

        Same result as the general path: per (item, user) the first of its latest clicks
        (seq = the click's position in the import), per item the ``max_seeds`` most recent
        by (ts, seq); ``first_seen`` = min(now, earliest click of the item), ``last_click``
        = its latest click, ``changed_seq`` = its highest kept seq. The clicks are resolved
        in numpy (ids as int codes ranked in string order), then only the kept rows are
        inserted, in primary-key order, with the secondary indexes dropped and rebuilt
        (one sort each instead of a random B-tree insert per row). DDL is transactional
        in SQLite, so a failure rolls the indexes back too.
        """
        import itertools

        import numpy as np

        seq0 = self._seq
        icode: dict[str, int] = {}
        ucode: dict[str, int] = {}
        ic_parts: list[np.ndarray] = []
        uc_parts: list[np.ndarray] = []
        ts_parts: list[np.ndarray] = []
        it = iter(clicks)
        while part := list(itertools.islice(it, chunk)):
            us, its, tss = zip(*part, strict=True)
            for codes, ids, parts in ((icode, its, ic_parts), (ucode, us, uc_parts)):
                fresh = dict.fromkeys(ids).keys() - codes.keys()
                codes.update(zip(fresh, range(len(codes), len(codes) + len(fresh)), strict=True))
                parts.append(np.fromiter(map(codes.__getitem__, ids), np.int64, len(ids)))
            ts_parts.append(np.fromiter(map(float, tss), np.float64, len(tss)))
        n = sum(p.size for p in ts_parts)
        self._seq = seq0 + n
        if n == 0:
            return 0
        ts = np.concatenate(ts_parts)
        if np.isnan(ts).any():  # what SQLite answers for a NaN bound to a NOT NULL column
            raise sqlite3.IntegrityError("NOT NULL constraint failed: seeds.ts (a NaN ts)")
        item_names, irank = self._ranked(icode)
        user_names, urank = self._ranked(ucode)
        ir = irank[np.concatenate(ic_parts)]
        key = ir * len(user_names) + urank[np.concatenate(uc_parts)]
        del ic_parts, uc_parts, ts_parts
        # by (item, user) in string order, then latest ts first, then arrival (stable)
        order = np.lexsort((-ts, key))
        ks = key[order]
        head = np.ones(n, dtype=bool)
        head[1:] = ks[1:] != ks[:-1]
        sel = order[head]  # one row per (item, user): the first of its latest clicks
        # first_seen: the earliest click of each item, trimmed and repeated ones included
        irs = ir[order]
        istart = np.flatnonzero(np.r_[True, irs[1:] != irs[:-1]])
        items_r = irs[istart]
        first = np.minimum.reduceat(ts[order], istart)
        s_item = ir[sel]
        s_ts = ts[sel]
        s_seq = sel.astype(np.int64) + (seq0 + 1)
        counts = np.bincount(s_item, minlength=len(item_names))
        if counts.max() > self.max_seeds:  # keep each item's max_seeds most recent
            rec = np.lexsort((-s_seq, -s_ts, s_item))
            start = np.cumsum(counts) - counts
            pos = np.arange(sel.size) - start[s_item[rec]]
            keep = np.zeros(sel.size, dtype=bool)
            keep[rec[pos < self.max_seeds]] = True
            sel, s_item, s_ts, s_seq = sel[keep], s_item[keep], s_ts[keep], s_seq[keep]
        s_start = np.flatnonzero(np.r_[True, s_item[1:] != s_item[:-1]])
        n_kept = np.diff(np.r_[s_start, s_item.size])
        last = np.maximum.reduceat(s_ts, s_start)
        changed = np.maximum.reduceat(s_seq, s_start)
        for name in _SEED_INDEXES:
            cur.execute(f"DROP INDEX {name}")
        names_i = np.asarray(item_names, dtype=object)
        names_u = np.asarray(user_names, dtype=object)
        user_of = key[sel] % len(user_names)
        rows = zip(
            names_i[s_item].tolist(),
            names_u[user_of].tolist(),
            s_ts.tolist(),
            s_seq.tolist(),
            strict=True,
        )
        cur.executemany("INSERT INTO seeds(item_id, user_id, ts, seq) VALUES (?,?,?,?)", rows)
        for name, on in _SEED_INDEXES.items():
            cur.execute(f"CREATE INDEX {name} ON {on}")
        cur.executemany(
            "INSERT INTO items(item_id, n_seeds, first_seen, last_click, changed_seq) "
            "VALUES (?,?,?,?,?)",
            zip(
                names_i[items_r].tolist(),
                n_kept.tolist(),
                np.minimum(first, now).tolist(),
                last.tolist(),
                changed.tolist(),
                strict=True,
            ),
        )
        return int(sel.size)

    @staticmethod
    def _ranked(codes: Mapping[str, int]) -> tuple[list[str], Any]:
        """The ids in string order (SQLite's BINARY order for text) and each code's rank."""
        import numpy as np

        names = sorted(codes)
        if not all(type(x) is str for x in names):
            raise TypeError("bulk_import: user and item ids must be str")
        rank = np.empty(len(names), dtype=np.int64)
        rank[np.fromiter(map(codes.__getitem__, names), np.int64, len(names))] = np.arange(
            len(names)
        )
        return names, rank

    def _upsert_general(
        self, cur: sqlite3.Cursor, clicks: Iterable[tuple[str, str, float]], chunk: int, now: float
    ) -> None:
        """:meth:`bulk_import` into a store that holds seeds already (or any store)."""
        seq0 = self._seq
        buf: list[tuple[str, str, float, int]] = []
        first: dict[str, float] = {}  # earliest imported click of each item
        for user_id, item_id, ts in clicks:
            self._seq += 1
            t = float(ts)
            buf.append((item_id, user_id, t, self._seq))
            if t < first.get(item_id, math.inf):
                first[item_id] = t
            if len(buf) >= chunk:
                self._upsert_many(cur, buf)
                buf = []
        self._upsert_many(cur, buf)
        touched = [
            r[0]
            for r in cur.execute(
                "SELECT DISTINCT item_id FROM seeds WHERE seq > ?", (seq0,)
            ).fetchall()
        ]
        for item_id in touched:
            (n,) = cur.execute(
                "SELECT COUNT(*) FROM seeds WHERE item_id = ?", (item_id,)
            ).fetchone()
            if n > self.max_seeds:
                cur.execute(
                    "DELETE FROM seeds WHERE item_id = ?1 AND user_id IN (SELECT "
                    "user_id FROM seeds WHERE item_id = ?1 ORDER BY ts, seq LIMIT ?2)",
                    (item_id, n - self.max_seeds),
                )
        cur.execute(
            "INSERT INTO items(item_id, n_seeds, first_seen, last_click, changed_seq) "
            "SELECT s.item_id, (SELECT COUNT(*) FROM seeds c WHERE c.item_id = s.item_id),"
            " ?, MAX(s.ts), MAX(s.seq) FROM seeds s WHERE s.seq > ? GROUP BY s.item_id "
            "ON CONFLICT(item_id) DO UPDATE SET n_seeds = excluded.n_seeds, "
            "last_click = MAX(last_click, excluded.last_click), "
            "changed_seq = excluded.changed_seq",
            (now, seq0),
        )
        # imported history: an item was first seen at its earliest click, not now
        cur.executemany(
            "UPDATE items SET first_seen = ?1 WHERE item_id = ?2 AND first_seen > ?1",
            [(t, i) for i, t in first.items()],
        )

    @staticmethod
    def _upsert_many(cur: sqlite3.Cursor, rows: list[tuple[str, str, float, int]]) -> None:
        cur.executemany(
            "INSERT INTO seeds(item_id, user_id, ts, seq) VALUES (?,?,?,?) "
            "ON CONFLICT(item_id, user_id) DO UPDATE SET ts = excluded.ts, seq = excluded.seq "
            "WHERE excluded.ts > seeds.ts",
            rows,
        )
