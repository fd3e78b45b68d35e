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

The schema lives in :mod:`ralm.serve.store_schema`, the bulk import (``bulk_import``, a
mixin of :class:`SQLiteSeedStore`) in :mod:`ralm.serve.store_bulk`.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ralm.serve.seed_store import Click, ItemState
from ralm.serve.store_bulk import BULK_CACHE_KIB as BULK_CACHE_KIB  # re-exported
from ralm.serve.store_bulk import SQLiteBulkImport
from ralm.serve.store_schema import _ITEM_COLS, _SCHEMA

__all__ = ["Click", "ItemState", "SQLiteSeedStore", "SeedStore"]

log = logging.getLogger(__name__)


class SQLiteSeedStore(SQLiteBulkImport):
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
