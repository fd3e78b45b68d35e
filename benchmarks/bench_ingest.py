"""Write a paper-scale generic dataset (3M users, 43.5K items, 9M clicks) as parquet."""
import sys
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
nu, ni, n = 2_984_724, 43_500, 8_891_670
tags_len = rng.integers(0, 4, nu)
off = np.concatenate([[0], np.cumsum(tags_len)]).astype(np.int32)
tag_vals = pa.array(rng.integers(0, 500, off[-1]).astype(str))
pq.write_table(pa.table({
    "user_id": np.arange(nu, dtype=np.int64),
    "gender": pa.array(rng.choice(["M", "F", "U"], nu)),
    "age": rng.normal(35, 10, nu),
    "tags": pa.ListArray.from_arrays(pa.array(off), tag_vals),
}), root / "users.parquet")
pq.write_table(pa.table({"item_id": np.arange(ni, dtype=np.int64),
                         "category": pa.array(rng.integers(0, 30, ni).astype(str))}), root / "items.parquet")
pq.write_table(pa.table({"user_id": rng.integers(0, nu, n), "item_id": (rng.zipf(1.2, n) - 1) % ni,
                         "timestamp": np.sort(rng.integers(1_500_000_000, 1_500_000_000 + 30*86400, n))}),
               root / "interactions.parquet")
(root / "dataset.toml").write_text('''[dataset]
name = "bench"
[files]
users = "users.parquet"
items = "items.parquet"
interactions = "interactions.parquet"
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
name = "history"
source = "item_id"
[[derived]]
name = "categories"
source = "item:category"
''')
