"""Reader of the ``user item item ...`` text format (LightGCN / NGCF data: train.txt, test.txt).

Each line holds one user id followed by the ids of the items the user interacted with,
separated by white space (``0 12 7 103``). A folder holds ``train.txt`` and ``test.txt``
(and optionally ``valid.txt``); ``ralm data prepare lightgcn:DIR --split given`` keeps
their split: test.txt rows are TEST, valid.txt rows VALID (``valid_from`` auto).

Mapping: every (user, item) entry is a click; there are no user features, so the only user
field is the derived item-ID ``history``. The format has no time, so file order is used as
time (train.txt first, then test.txt, then valid.txt; RecBole's rule) and the dataset is
marked ``time_from_order``: VALID, when drawn from train.txt, is a random per-user sample.
Blank lines are skipped; a line with a user and no items adds no rows. Parsing is
vectorised (pyarrow), errors name the file and line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ralm.data.ingest import RawData
from ralm.data.readers import with_file_order_time
from ralm.data.schema import schema_from_dict
from ralm.data.tables import TableSource
from ralm.errors import DataError

log = logging.getLogger(__name__)

FILES = {"interactions": "train.txt", "test_interactions": "test.txt"}
VALID_FILE = "valid.txt"


def read_user_item_lines(path: str | Path) -> pa.Table:
    """One ``user item item ...`` file -> a ``user_id, item_id`` string table (file order).

    Raises:
        DataError: missing or unreadable file, bad UTF-8 (naming the line), no entries.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} does not exist")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{p}, line {line}: not valid UTF-8 ({e.reason})") from e
    tokens = pc.utf8_split_whitespace(pa.array(text.split("\n"), pa.string()))  # per line
    lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)  # (n_lines,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = pc.list_flatten(tokens)  # (n_tokens,) every id of the file
    line_of = np.repeat(np.arange(lengths.size), lengths)  # (n_tokens,) 0-based line
    is_user = np.zeros(len(flat), dtype=bool)
    is_user[starts[lengths > 0]] = True
    users = flat.filter(pa.array(is_user))  # one per non-blank line
    user_of_line = np.full(lengths.size, -1, dtype=np.int64)
    user_of_line[lengths > 0] = np.arange(len(users))
    items = flat.filter(pa.array(~is_user))
    user = users.take(pa.array(user_of_line[line_of[~is_user]]))
    n_empty = int((lengths == 1).sum())
    if n_empty:
        log.info("%s: %d users have no items on their line", p, n_empty)
    if len(items) == 0:
        raise DataError(f"{p}: no (user, item) entries (expected lines 'user item item ...')")
    return pa.table({"user_id": user, "item_id": items})


def read_user_item_lists(folder: str | Path) -> RawData:
    """A folder with ``train.txt`` + ``test.txt`` (+ ``valid.txt``) -> :class:`RawData`."""
    d = Path(folder)
    if not d.is_dir():
        raise DataError(f"{d}: not a folder with train.txt / test.txt")
    paths = {role: d / name for role, name in FILES.items()}
    if (d / VALID_FILE).is_file():
        paths["valid_interactions"] = d / VALID_FILE
    for p in paths.values():
        if not p.is_file():
            raise DataError(f"{p} does not exist (expected train.txt and test.txt in {d})")
    tables = {role: read_user_item_lines(p) for role, p in paths.items()}
    timed = with_file_order_time(
        [tables["interactions"], tables["test_interactions"], tables.get("valid_interactions")]
    )
    schema = schema_from_dict(
        {
            "dataset": {"name": d.name},
            "files": {role: str(p) for role, p in paths.items()},
            "derived": [{"name": "history", "source": "item_id"}],
        },
        origin=str(d),
    )
    inter = timed[0]
    assert inter is not None
    return RawData(
        schema=schema,
        interactions=inter,
        test_interactions=timed[1],
        valid_interactions=timed[2],
        sources={role: TableSource(str(p)) for role, p in paths.items()},
        time_from_order=True,
    )
