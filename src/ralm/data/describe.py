"""Statistics of an encoded dataset (``ralm data describe``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ralm.data.encoded import EncodedDataset, Split


def _field_stats(ds: EncodedDataset) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ci = 0
    for f in ds.fields:
        row: dict[str, Any] = {"name": f.name, "kind": f.kind}
        if f.kind == "univalent":
            codes = np.asarray(ds.univalent[f.name])
            row.update(vocab_size=f.vocab_size, oov_rate=float(np.mean(codes == 0)))
        elif f.kind == "multivalent":
            offsets, values = ds.multivalent[f.name]
            lengths = np.diff(np.asarray(offsets))
            row.update(
                vocab_size=f.vocab_size,
                item_history=f.item_history,
                nnz=int(np.asarray(values).size),
                mean_len=float(lengths.mean()) if lengths.size else 0.0,
                empty_rate=float(np.mean(lengths == 0)) if lengths.size else 0.0,
            )
        else:
            col = np.asarray(ds.continuous[:, ci])
            ci += 1
            row.update(min=f.min, max=f.max, mean_normalised=float(col.mean()) if col.size else 0.0)
        out.append(row)
    return out


def describe(ds: EncodedDataset) -> dict[str, Any]:
    """Sizes, fields (kinds, vocab sizes), split sizes and cold items of a dataset."""
    it = ds.interactions
    split = np.asarray(it.split)
    counts = np.bincount(split, minlength=len(Split))
    user, item = np.asarray(it.user), np.asarray(it.item)

    def distinct(x: np.ndarray, m: np.ndarray, n: int) -> int:
        return int(np.count_nonzero(np.bincount(x[m], minlength=n)))

    users_per_split = {s.name.lower(): distinct(user, split == s, ds.n_users) for s in Split}
    items_per_split = {s.name.lower(): distinct(item, split == s, ds.n_items) for s in Split}
    n_cold = distinct(item, split >= int(Split.COLD_SEED), ds.n_items)
    ts = np.asarray(it.ts)
    n = len(it)
    return {
        "name": ds.name,
        "n_users": ds.n_users,
        "n_items": ds.n_items,
        "n_interactions": n,
        "n_clicks": int((np.asarray(it.label) > 0).sum()),
        "density": n / max(ds.n_users * ds.n_items, 1),
        "time_range": [int(ts.min()), int(ts.max())] if n else None,
        "fields": _field_stats(ds),
        "splits": {s.name.lower(): int(counts[s]) for s in Split},
        "users_per_split": users_per_split,
        "items_per_split": items_per_split,
        "n_cold_items": n_cold,
        "split_config": {
            k: v for k, v in ds.extra.get("split", {}).items() if k not in ("counts",)
        },
        "users_without_features": ds.extra.get("users_without_features"),
        "source": ds.extra.get("source"),
    }
