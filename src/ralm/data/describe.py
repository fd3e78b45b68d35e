"""Statistics of an encoded dataset (``ralm data describe``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

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


def _fmt_ts(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def print_description(
    data: EncodedDataset | dict[str, Any], title: str = "", console: Console | None = None
) -> None:
    """Print the statistics as rich tables (for the CLI and the demo).

    Args:
        data: an encoded dataset, or the dict :func:`describe` returned for one.
        title: extra title text (e.g. the folder).
        console: where to print (default: a new stdout console).
    """
    d = describe(data) if isinstance(data, EncodedDataset) else data
    console = console or Console()
    head = Table(title=f"dataset {d['name']}  {title}".strip(), show_header=False)
    head.add_row("users", f"{d['n_users']:,}")
    head.add_row("items", f"{d['n_items']:,}")
    head.add_row("interactions", f"{d['n_interactions']:,} ({d['n_clicks']:,} clicks)")
    head.add_row("density", f"{d['density']:.4%}")
    if d["time_range"]:
        head.add_row("time", " .. ".join(_fmt_ts(t) for t in d["time_range"]))
    head.add_row("cold items", f"{d['n_cold_items']:,}")
    if d.get("users_without_features"):
        head.add_row("users without features (all OOV)", f"{d['users_without_features']:,}")
    cfg = d.get("split_config") or {}
    if cfg:
        head.add_row("split", ", ".join(f"{k}={v}" for k, v in cfg.items()))
    console.print(head)

    fields = Table(title="fields")
    for col in ("field", "kind", "vocab", "OOV / empty", "mean len", "min..max"):
        fields.add_column(col)
    for f in d["fields"]:
        kind = f["kind"] + (" (item history)" if f.get("item_history") else "")
        rate = f.get("oov_rate", f.get("empty_rate"))
        fields.add_row(
            f["name"],
            kind,
            f"{f['vocab_size']:,}" if "vocab_size" in f else "",
            f"{rate:.1%}" if rate is not None else "",
            f"{f['mean_len']:.1f}" if "mean_len" in f else "",
            f"{f['min']:g}..{f['max']:g}" if f.get("min") is not None else "",
        )
    console.print(fields)

    splits = Table(title="splits")
    for col in ("split", "rows", "users", "items"):
        splits.add_column(col, justify="right" if col != "split" else "left")
    for name, rows in d["splits"].items():
        splits.add_row(
            name, f"{rows:,}", f"{d['users_per_split'][name]:,}", f"{d['items_per_split'][name]:,}"
        )
    console.print(splits)
