"""The seed store: per item, its most recent N clickers, in SQLite (WAL mode).

Durability: every ``add_clicks`` call is one transaction, and the HTTP layer acknowledges a
click only after that commit returned. In WAL mode a commit appends the transaction to the
``-wal`` file with ``write()`` before returning, so a ``kill -9`` of the server cannot lose
it (the data is in the OS page cache, and the next open replays the WAL). With
``synchronous=FULL`` (the default) the WAL is also fsynced on each commit, so an
acknowledged click survives a power cut too; ``NORMAL`` trades that for fewer fsyncs.

Tables::

    items(item_id, n_seeds, first_seen, last_click, changed_seq, clustered_seq)
    seeds(item_id, user_id, ts, seq)     one row per (item, user): a repeat click refreshes it
    users(user_id, features)             raw features of users first seen online
    meta(key, value)                     last published index version/path, ...

Recency is (ts, seq): event time, then arrival order. ``changed_seq > clustered_seq``
marks an item whose seeds changed since its last published clustering; the re-cluster job
reads those and records the ``changed_seq`` it covered, so clicks that arrive during a cycle
keep their item dirty for the next one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
CREATE INDEX IF NOT EXISTS seeds_recency ON seeds(item_id, ts, seq);
CREATE INDEX IF NOT EXISTS seeds_user ON seeds(user_id);
CREATE TABLE IF NOT EXISTS users(user_id TEXT PRIMARY KEY, features TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Click:
    """One click event.

    Args:
        user_id: raw user id.
        item_id: raw item id (created on its first click).
        ts: event time, unix seconds.
    """

    user_id: str
    item_id: str
    ts: float


@dataclass(frozen=True)
class ItemState:
    """What the store knows about one item."""

    item_id: str
    n_seeds: int
    first_seen: float
    last_click: float
    changed_seq: int
    clustered_seq: int


class SeedStore:
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
        row = self._w.execute("SELECT MAX(seq) FROM seeds").fetchone()
        self._seq = int(row[0] or 0)
        changed = self._w.execute("SELECT MAX(changed_seq) FROM items").fetchone()
        self._seq = max(self._seq, int(changed[0] or 0))

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
        """Append clicks in ONE durable transaction; returns how many new (item, user) seeds.

        A repeat click of the same user on the same item refreshes its recency instead of
        adding a seed. Items never seen are created. Items over ``max_seeds`` lose their
        oldest seeds. When this returns, the clicks are committed.
        """
        if not clicks:
            return 0
        now = time.time()
        with self._wlock:
            cur = self._w.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                added: dict[str, int] = {}
                last: dict[str, float] = {}
                for c in clicks:
                    self._seq += 1
                    cur.execute(
                        "INSERT OR IGNORE INTO seeds(item_id, user_id, ts, seq) VALUES (?,?,?,?)",
                        (c.item_id, c.user_id, c.ts, self._seq),
                    )
                    if cur.rowcount == 1:
                        added[c.item_id] = added.get(c.item_id, 0) + 1
                    else:
                        cur.execute(
                            "UPDATE seeds SET ts = MAX(ts, ?), seq = ? "
                            "WHERE item_id = ? AND user_id = ?",
                            (c.ts, self._seq, c.item_id, c.user_id),
                        )
                    last[c.item_id] = max(last.get(c.item_id, c.ts), c.ts)
                for item_id, t in last.items():
                    cur.execute(
                        "INSERT INTO items(item_id, n_seeds, first_seen, last_click, changed_seq)"
                        " VALUES (?,?,?,?,?) ON CONFLICT(item_id) DO UPDATE SET "
                        "n_seeds = n_seeds + excluded.n_seeds, "
                        "last_click = MAX(last_click, excluded.last_click), "
                        "changed_seq = excluded.changed_seq",
                        (item_id, added.get(item_id, 0), now, t, self._seq),
                    )
                self._trim(cur, list(last))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return sum(added.values())

    def _trim(self, cur: sqlite3.Cursor, item_ids: Iterable[str]) -> None:
        for item_id in item_ids:
            (n,) = cur.execute("SELECT n_seeds FROM items WHERE item_id = ?", (item_id,)).fetchone()
            excess = int(n) - self.max_seeds
            if excess <= 0:
                continue
            cur.execute(
                "DELETE FROM seeds WHERE item_id = ?1 AND user_id IN (SELECT user_id FROM seeds "
                "WHERE item_id = ?1 ORDER BY ts, seq LIMIT ?2)",
                (item_id, excess),
            )
            cur.execute(
                "UPDATE items SET n_seeds = n_seeds - ? WHERE item_id = ?", (cur.rowcount, item_id)
            )

    def bulk_import(self, clicks: Iterable[tuple[str, str, float]], chunk: int = 200_000) -> int:
        """Load historical (user_id, item_id, ts) clicks fast (bootstrap from a dataset).

        Rows are upserted with ``executemany`` in chunks; seed counts are recomputed once at
        the end. Returns the number of seed rows in the store afterwards.
        """
        now = time.time()
        with self._wlock:
            cur = self._w.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                buf: list[tuple[str, str, float, int]] = []
                for user_id, item_id, ts in clicks:
                    self._seq += 1
                    buf.append((item_id, user_id, float(ts), self._seq))
                    if len(buf) >= chunk:
                        self._upsert_many(cur, buf)
                        buf = []
                self._upsert_many(cur, buf)
                cur.execute(
                    "INSERT INTO items(item_id, n_seeds, first_seen, last_click, changed_seq) "
                    "SELECT item_id, COUNT(*), ?, MAX(ts), MAX(seq) FROM seeds WHERE true "
                    "GROUP BY item_id ON CONFLICT(item_id) DO UPDATE SET "
                    "n_seeds = excluded.n_seeds, last_click = excluded.last_click, "
                    "changed_seq = excluded.changed_seq",
                    (now,),
                )
                self._trim(cur, [r[0] for r in cur.execute("SELECT item_id FROM items")])
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            (total,) = self._w.execute("SELECT COUNT(*) FROM seeds").fetchone()
        return int(total)

    @staticmethod
    def _upsert_many(cur: sqlite3.Cursor, rows: list[tuple[str, str, float, int]]) -> None:
        cur.executemany(
            "INSERT INTO seeds(item_id, user_id, ts, seq) VALUES (?,?,?,?) "
            "ON CONFLICT(item_id, user_id) DO UPDATE SET ts = MAX(ts, excluded.ts), "
            "seq = excluded.seq",
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
            .execute(
                "SELECT item_id, n_seeds, first_seen, last_click, changed_seq, clustered_seq "
                "FROM items WHERE item_id = ?",
                (item_id,),
            )
            .fetchone()
        )
        return None if row is None else ItemState(*row)

    def items(self, changed_only: bool = False) -> list[ItemState]:
        """Every item (or only those whose seeds changed since their last clustering)."""
        where = " WHERE changed_seq > clustered_seq" if changed_only else ""
        rows = (
            self._reader()
            .execute(
                "SELECT item_id, n_seeds, first_seen, last_click, changed_seq, clustered_seq "
                f"FROM items{where} ORDER BY first_seen, item_id"
            )
            .fetchall()
        )
        return [ItemState(*r) for r in rows]

    def seeds(self, item_id: str, limit: int | None = None) -> list[str]:
        """User ids of the item's seeds, most recent first (at most ``limit``)."""
        lim = self.max_seeds if limit is None else int(limit)
        rows = (
            self._reader()
            .execute(
                "SELECT user_id FROM seeds WHERE item_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
                (item_id, lim),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def items_of_user(self, user_id: str, limit: int = 100_000) -> list[str]:
        """Items the user clicked (as stored seeds)."""
        rows = (
            self._reader()
            .execute("SELECT item_id FROM seeds WHERE user_id = ? LIMIT ?", (user_id, limit))
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
