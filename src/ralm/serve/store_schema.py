"""The SQLite seed store's schema: its tables, the secondary indexes of ``seeds``.

Split out of :mod:`ralm.serve.store` (which documents what each table holds). The one-pass
bulk load (:mod:`ralm.serve.store_bulk`) drops and rebuilds ``_SEED_INDEXES`` around a load
into an empty store.
"""

from __future__ import annotations

__all__: list[str] = []

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
_ITEM_COLS = "item_id, n_seeds, first_seen, last_click, changed_seq, clustered_seq"
