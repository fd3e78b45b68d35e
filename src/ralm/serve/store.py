"""The SQLite seed store: per item, its most recent N clickers (WAL mode).

Implements :class:`ralm.serve.seed_store.SeedStore` (see that module for the semantics
shared with the Redis store).

Durability: every ``add_clicks`` call is one transaction, and the HTTP layer acknowledges a
click only after that commit returned. In WAL mode a commit appends the transaction to the
``-wal`` file with ``write()`` before returning, so a ``kill -9`` of the server cannot lose
it (the data is in the OS page cache, and the next open replays the WAL). With
``synchronous=FULL`` (the default) the WAL is also fsynced on each commit, so an
acknowledged click survives a power cut too; ``NORMAL`` trades that for fewer fsyncs.

Tables::

    items(item_id, n_seeds, first_seen, last_click, changed_seq, clustered_seq)
    seeds(item_id, user_id, ts, seq)     one row per (item, user): a newer click refreshes it
    users(user_id, features)             raw features of users first seen online
    meta(key, value)                     last published index version/path, ...
    counters(name, value)                the last sequence number handed out

Recency is (ts, seq): event time, then arrival order. ``changed_seq > clustered_seq``
marks an item whose seeds changed since its last published clustering; the re-cluster job
reads those and records the ``changed_seq`` it covered, so clicks that arrive during a cycle
keep their item dirty for the next one.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ralm.serve.seed_store import Click, ItemState

__all__ = ["Click", "ItemState", "SQLiteSeedStore", "SeedStore"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items(
    item_id TEXT PRIMARY KEY,
    n_seeds INTEGER NOT NULL DEFAULT 0,
    first_seen REAL NOT NULL,
    last_click REAL NOT NULL,
    changed_seq INTEGER NOT NULL DEFAULT 0,
    clustered_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS seeds(
    item_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    ts REAL NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (item_id, user_id)
) WITHOUT ROWID;
{seed_indexes}
CREATE TABLE IF NOT EXISTS users(user_id TEXT PRIMARY KEY, features TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# the secondary indexes of ``seeds`` (dropped and rebuilt around a load into an empty store)
_SEED_INDEXES = {
    "seeds_recency": "seeds(item_id, ts, seq)",
    "seeds_user": "seeds(user_id)",
    "seeds_seq": "seeds(seq)",
}
_SCHEMA = _SCHEMA.replace(
    "{seed_indexes}",
    "\n".join(f"CREATE INDEX IF NOT EXISTS {k} ON {v};" for k, v in _SEED_INDEXES.items()),
)

BULK_CACHE_KIB = 512 * 1024  # page cache of a bulk import (SQLite default: 2 MiB)
_ITEM_COLS = "item_id, n_seeds, first_seen, last_click, changed_seq, clustered_seq"


class SQLiteSeedStore:
    """Durable per-item seed sets (most recent ``max_seeds`` distinct clickers).

    Thread-safe: writes go through one connection under a lock; every reading thread gets
    its own connection (WAL readers never block the writer).

    Args:
        path: SQLite database file (created with its folder if missing).
        max_seeds: N, distinct clickers kept per item; older ones are dropped.
        synchronous: ``FULL`` (fsync per commit), ``NORMAL`` or ``EXTRA``.
    """

    def __init__(self, path: str | Path, max_seeds: int = 3_000_000, synchronous: str = "FULL"):
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        if int(max_seeds) < 1:
            raise ValueError(f"max_seeds must be >= 1, got {max_seeds}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_seeds = int(max_seeds)
        self._sync = synchronous
        self._wlock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._w = self._connect()
        self._w.executescript(_SCHEMA)
        seq = 0
        for q in (
            "SELECT MAX(seq) FROM seeds",
            "SELECT MAX(changed_seq) FROM items",
            "SELECT value FROM counters WHERE name = 'seq'",
        ):
            row = self._w.execute(q).fetchone()
            seq = max(seq, int(row[0] or 0) if row else 0)
        self._seq = seq

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={self._sync}")
        con.execute("PRAGMA busy_timeout=10000")
        return con

    def _reader(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._connect()
            self._local.con = con
            with self._readers_lock:
                self._readers.append(con)
        return con

    def close(self) -> None:
        """Close every connection (checkpointing the WAL)."""
        with self._readers_lock:
            for con in self._readers:
                con.close()
            self._readers.clear()
        with self._wlock:
            self._w.close()

    # ---- writes --------------------------------------------------------------------------
    def add_clicks(self, clicks: Sequence[Click]) -> int:
        """Store clicks in ONE durable transaction; returns how many new seeds it kept.

        A click newer than the user's stored seed on that item refreshes it; an older or
        equal one (a re-sent event) changes nothing. Items never seen are created. Items
        over ``max_seeds`` lose their oldest seeds. When this returns, it is committed.
        """
        if not clicks:
            return 0
        now = time.time()
        with self._wlock:
            cur = self._w.cursor()
            cur.execute("BEGIN IMMEDIATE")
            self._sync_seq(cur)  # another process may write the same file
            seq0 = self._seq
            try:
                written: dict[str, dict[str, tuple[float, int, bool]]] = {}
                for c in clicks:
                    ts = float(c.ts)
                    if not math.isfinite(ts):
                        raise ValueError(
                            f"click ({c.user_id!r}, {c.item_id!r}): ts must be finite, got {ts}"
                        )
                    seq = self._seq + 1
                    cur.execute(
                        "INSERT OR IGNORE INTO seeds(item_id, user_id, ts, seq) VALUES (?,?,?,?)",
                        (c.item_id, c.user_id, ts, seq),
                    )
                    is_new = cur.rowcount == 1
                    if not is_new:
                        cur.execute(
                            "UPDATE seeds SET ts = ?1, seq = ?2 "
                            "WHERE item_id = ?3 AND user_id = ?4 AND ts < ?1",
                            (ts, seq, c.item_id, c.user_id),
                        )
                        if cur.rowcount != 1:
                            continue  # a re-sent or older event: nothing changes
                    self._seq = seq
                    mine = written.setdefault(c.item_id, {})
                    was_new = is_new or mine.get(c.user_id, (0.0, 0, False))[2]
                    mine[c.user_id] = (ts, seq, was_new)
                added = self._finish_items(cur, written, now)
                if self._seq != seq0:
                    self._save_seq(cur)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                self._seq = seq0
                raise
        return added

    def _finish_items(
        self,
        cur: sqlite3.Cursor,
        written: Mapping[str, Mapping[str, tuple[float, int, bool]]],
        now: float,
    ) -> int:
        """Trim the written items and update their rows; returns the new seeds kept.

        ``written[item][user] = (ts, seq, is_new)`` are this step's stored events. An item
        changed iff one of them survived the trim; its ``changed_seq`` is then the highest
        seq among its stored seeds.
        """
        added = 0
        for item_id, mine in written.items():
            row = cur.execute("SELECT n_seeds FROM items WHERE item_id = ?", (item_id,)).fetchone()
            n_new = sum(1 for _, _, new in mine.values() if new)
            n = (int(row[0]) if row else 0) + n_new
            removed: set[str] = set()
            if n > self.max_seeds:
                removed = {
                    r[0]
                    for r in cur.execute(
                        "DELETE FROM seeds WHERE item_id = ?1 AND user_id IN (SELECT user_id "
                        "FROM seeds WHERE item_id = ?1 ORDER BY ts, seq LIMIT ?2) "
                        "RETURNING user_id",
                        (item_id, n - self.max_seeds),
                    ).fetchall()
                }
                n -= len(removed)
            kept = [(ts, seq, new) for u, (ts, seq, new) in mine.items() if u not in removed]
            if not kept:
                continue  # every event of this step was trimmed again: the item is unchanged
            added += sum(1 for _, _, new in kept if new)
            cur.execute(
                "INSERT INTO items(item_id, n_seeds, first_seen, last_click, changed_seq)"
                " VALUES (?,?,?,?,?) ON CONFLICT(item_id) DO UPDATE SET "
                "n_seeds = excluded.n_seeds, "
                "last_click = MAX(last_click, excluded.last_click), "
                "changed_seq = excluded.changed_seq",
                (item_id, n, now, max(t for t, _, _ in mine.values()), max(s for _, s, _ in kept)),
            )
        return added

    def _sync_seq(self, cur: sqlite3.Cursor) -> None:
        row = cur.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()
        if row is not None:
            self._seq = max(self._seq, int(row[0]))

    def _save_seq(self, cur: sqlite3.Cursor) -> None:
        cur.execute(
            "INSERT INTO counters(name, value) VALUES ('seq', ?) ON CONFLICT(name) "
            "DO UPDATE SET value = excluded.value",
            (self._seq,),
        )

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

    def mark_clustered(self, covered: Mapping[str, int]) -> None:
        """Record, per item, the ``changed_seq`` that a published clustering covered."""
        with self._wlock:
            self._w.execute("BEGIN IMMEDIATE")
            self._w.executemany(
                "UPDATE items SET clustered_seq = MAX(clustered_seq, ?) WHERE item_id = ?",
                [(int(s), i) for i, s in covered.items()],
            )
            self._w.execute("COMMIT")

    def mark_all_changed(self) -> None:
        """Make every item pending for the next full cycle (e.g. after losing an index)."""
        with self._wlock:
            self._w.execute("UPDATE items SET clustered_seq = 0")

    def put_user_features(self, user_id: str, features: Mapping[str, Any]) -> None:
        """Remember the raw features of a user first seen online (used to embed its seeds)."""
        with self._wlock:
            self._w.execute(
                "INSERT INTO users(user_id, features) VALUES (?, ?) ON CONFLICT(user_id) "
                "DO UPDATE SET features = excluded.features",
                (user_id, json.dumps(dict(features), sort_keys=True)),
            )

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key`` (durably)."""
        with self._wlock:
            self._w.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) "
                "DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    # ---- reads ---------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def item(self, item_id: str) -> ItemState | None:
        """State of one item, or None if it was never clicked."""
        row = (
            self._reader()
            .execute(f"SELECT {_ITEM_COLS} FROM items WHERE item_id = ?", (item_id,))
            .fetchone()
        )
        return None if row is None else ItemState(*row)

    def items(self, changed_only: bool = False) -> list[ItemState]:
        """Every item (or only those whose seeds changed since their last clustering)."""
        where = " WHERE changed_seq > clustered_seq" if changed_only else ""
        rows = (
            self._reader()
            .execute(f"SELECT {_ITEM_COLS} FROM items{where} ORDER BY first_seen, item_id")
            .fetchall()
        )
        return [ItemState(*r) for r in rows]

    def seeds(self, item_id: str, limit: int | None = None) -> list[str]:
        """User ids of the item's seeds, most recent first (at most ``limit``)."""
        lim = self.max_seeds if limit is None else max(0, int(limit))
        rows = (
            self._reader()
            .execute(
                "SELECT user_id FROM seeds WHERE item_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
                (item_id, lim),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def seeds_many(self, item_ids: Sequence[str], limit: int | None = None) -> dict[str, list[str]]:
        """Seeds of many items (most recent first), read in one snapshot.

        One read transaction running one prepared, index-ranged ``LIMIT`` query per item:
        in SQLite (no round trip per statement) this measured 2.5x faster than chunked
        ``IN (...)`` queries, which must sort every seed of every item. Unknown items map
        to ``[]``.
        """
        lim = self.max_seeds if limit is None else max(0, int(limit))
        ids = list(dict.fromkeys(item_ids))
        if lim == 0 or not ids:
            return {i: [] for i in ids}
        q = "SELECT user_id FROM seeds WHERE item_id = ? ORDER BY ts DESC, seq DESC LIMIT ?"
        con = self._reader()
        con.execute("BEGIN")
        try:
            return {i: [r[0] for r in con.execute(q, (i, lim))] for i in ids}
        finally:
            con.execute("COMMIT")

    def clicks_since(self, watermark: int, limit: int = 100_000) -> tuple[list[Click], int]:
        """Stored seed events with ``seq > watermark``, oldest first (at most ``limit``).

        A seed refreshed later appears once, with its newest event; trimmed seeds do not
        appear. Returns the events and the new watermark (the last seq returned, or
        ``watermark`` when nothing is newer).
        """
        rows = (
            self._reader()
            .execute(
                "SELECT user_id, item_id, ts, seq FROM seeds WHERE seq > ? ORDER BY seq LIMIT ?",
                (int(watermark), max(0, int(limit))),
            )
            .fetchall()
        )
        clicks = [Click(u, i, t) for u, i, t, _ in rows]
        return clicks, (int(rows[-1][3]) if rows else int(watermark))

    def items_of_user(self, user_id: str, limit: int = 100_000) -> list[str]:
        """Items the user clicked (as stored seeds), in item id order."""
        rows = (
            self._reader()
            .execute(
                "SELECT item_id FROM seeds WHERE user_id = ? ORDER BY item_id LIMIT ?",
                (user_id, max(0, int(limit))),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def user_features(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Raw features stored for these users (absent users are left out)."""
        out: dict[str, dict[str, Any]] = {}
        con = self._reader()
        for i in range(0, len(user_ids), 500):
            part = list(user_ids[i : i + 500])
            marks = ",".join("?" * len(part))
            q = f"SELECT user_id, features FROM users WHERE user_id IN ({marks})"
            for uid, feats in con.execute(q, part):
                out[uid] = json.loads(feats)
        return out

    def n_items(self) -> int:
        (n,) = self._reader().execute("SELECT COUNT(*) FROM items").fetchone()
        return int(n)

    def n_seed_rows(self) -> int:
        (n,) = self._reader().execute("SELECT COUNT(*) FROM seeds").fetchone()
        return int(n)


SeedStore = SQLiteSeedStore
"""Temporary alias (the old name) until every caller says ``SQLiteSeedStore``."""
