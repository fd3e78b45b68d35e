"""A tiny generic dataset (users, items, interactions, TOML) written into a test folder."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

USERS_CSV = """user_id,gender,tags,age
u1,F,a|b,20
u2,M,b,30
u3,F,,40
u4,M,c|a,
u5,X,d,100
"""

ITEMS_CSV = """item_id,genre
i1,x|y
i2,y
i3,z
i4,x
"""

# u6 is not in the users table; i4 is clicked only by u5 late in time
INTERACTIONS_CSV = """user_id,item_id,timestamp,label
u1,i1,100,1
u1,i2,110,1
u1,i3,120,1
u1,i1,130,1
u2,i2,105,1
u2,i3,115,0
u2,i1,125,1
u3,i3,101,1
u3,i2,102,1
u4,i1,103,1
u6,i2,104,1
u6,i3,140,1
u5,i4,150,1
"""

TOML = """
[dataset]
name = "tiny"
[files]
users = "users.{ext}"
items = "items.{ext}"
interactions = "interactions.{ext}"
[[fields]]
name = "gender"
kind = "univalent"
[[fields]]
name = "tags"
kind = "multivalent"
[[fields]]
name = "age"
kind = "continuous"
[[derived]]
name = "genres"
source = "item:genre"
[[derived]]
name = "history"
source = "item_id"
"""


def write_tiny(root: Path, fmt: str = "csv", **override: str) -> Path:
    """Write the tiny dataset as CSV or Parquet; ``override`` replaces file contents."""
    root.mkdir(parents=True, exist_ok=True)
    texts = {"users": USERS_CSV, "items": ITEMS_CSV, "interactions": INTERACTIONS_CSV}
    texts.update(override)
    for name, text in texts.items():
        if fmt == "csv":
            (root / f"{name}.csv").write_text(text)
        else:
            pq.write_table(_to_arrow(name, text), root / f"{name}.parquet")
    (root / "dataset.toml").write_text(TOML.format(ext=fmt))
    return root / "dataset.toml"


def _to_arrow(name: str, text: str) -> pa.Table:
    lines = [line.split(",") for line in text.strip().splitlines()]
    header, rows = lines[0], lines[1:]
    cols: dict[str, list] = {h: [r[i] for r in rows] for i, h in enumerate(header)}
    if name == "users":
        cols["tags"] = [v.split("|") if v else None for v in cols["tags"]]
        cols["age"] = [float(v) if v else None for v in cols["age"]]
    if name == "items":
        cols["genre"] = [v.split("|") for v in cols["genre"]]
    if name == "interactions":
        cols["timestamp"] = [int(v) for v in cols["timestamp"]]
        cols["label"] = [int(v) for v in cols["label"]]
    return pa.table(cols)
