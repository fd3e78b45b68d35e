"""The encoded dataset artifact: the one shape every later stage reads.

Written once by ``ralm data prepare`` and loaded (memory-mapped) by the trainers,
the evaluator and the service. Everything is a flat numpy array, so loading is
O(file size) with no Python loop over rows.

Layout of a dataset folder::

    meta.json                      schema, sizes, vocab sizes, normalisation stats, splits
    user_ids.npy / item_ids.npy    raw ids (str), position = contiguous index
    vocab/<field>.npy              raw categorical values (str), position + 1 = code
    features/<field>.npy           univalent codes, int64 (n_users,)
    features/<field>.offsets.npy   multivalent CSR offsets, int64 (n_users + 1,)
    features/<field>.values.npy    multivalent CSR values, int64 (nnz,)
    features/<field>.counts.npy    derived attribute fields (optional): int64 (nnz,) parallel
                                   to values, number of distinct TRAIN-clicked items of the
                                   user that carry the code
    features/<field>.item_offsets.npy / .item_values.npy
                                   derived attribute fields (optional): item -> codes CSR
    features/continuous.npy        float32 (n_users, n_continuous), already in [0, 1]
    interactions/{user,item,ts,label,split}.npy   one row per event, sorted by ts

Codes: categorical code 0 is the explicit OOV / missing value; real values are
1..vocab_size-1. A multivalent field whose ``item_history`` flag is set holds item
indices + 1 (so 0 stays OOV); trainers remove the example's target item from it
(see :func:`ralm.data.batching.exclude_targets`), which is how no training
example ever sees its own target in its history input. Multivalent fields derived from
item attributes over the TRAIN clicks (``derived_from_items``, e.g. MovieLens ``genres``)
carry a :class:`DerivedInfo` so that the same exclusion also drops the codes whose only
source in the user's history is the target item. Datasets written before these arrays
existed still load (``derived`` is then empty: no exclusion info for those fields).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class Split(IntEnum):
    """Split membership of one interaction row (``interactions/split.npy``)."""

    TRAIN = 0
    VALID = 1
    TEST = 2
    COLD_SEED = 3  # earliest clicks of held-out cold items: seeds only, never trained on
    COLD_TEST = 4  # later clicks of held-out cold items: evaluation only


@dataclass
class FieldInfo:
    """One user feature field as encoded."""

    name: str
    kind: str  # "univalent" | "multivalent" | "continuous"
    vocab_size: int = 0  # categorical only; includes code 0 (OOV)
    item_history: bool = False  # multivalent field of item indices + 1
    min: float | None = None  # continuous only: training-split statistics
    max: float | None = None
    derived_from_items: bool = False  # multivalent bag of item attributes over TRAIN clicks

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        if not self.derived_from_items:  # keep older meta.json / checkpoint configs unchanged
            del out["derived_from_items"]
        return out


@dataclass
class DerivedInfo:
    """Exclusion info of a multivalent field derived from item attributes.

    Attributes:
        counts: int64 (nnz,) parallel to the field's CSR values: how many distinct
            TRAIN-clicked items of that user carry that code (>= 1).
        item_offsets: int64 (n_items + 1,) item -> codes CSR offsets.
        item_values: int64 (item_nnz,) codes of each item for this field (OOV 0 omitted).
    """

    counts: np.ndarray
    item_offsets: np.ndarray
    item_values: np.ndarray


DERIVED_FILES = ("counts", "item_offsets", "item_values")


@dataclass
class Interactions:
    """Event table, sorted by timestamp. All arrays have the same length."""

    user: np.ndarray  # int64 (n,) user index
    item: np.ndarray  # int64 (n,) item index
    ts: np.ndarray  # int64 (n,) unix seconds
    label: np.ndarray  # int8 (n,) 1 = click (positive), 0 = explicit negative
    split: np.ndarray  # int8 (n,) Split code

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def mask(self, *splits: Split) -> np.ndarray:
        return np.isin(self.split, np.asarray([int(s) for s in splits], dtype=np.int8))


@dataclass
class EncodedDataset:
    """In-memory (or memory-mapped) view of an encoded dataset folder."""

    name: str
    user_ids: np.ndarray  # str (n_users,)
    item_ids: np.ndarray  # str (n_items,)
    fields: list[FieldInfo]
    univalent: dict[str, np.ndarray]  # name -> int64 (n_users,)
    multivalent: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (offsets, values)
    continuous: np.ndarray  # float32 (n_users, n_continuous)
    interactions: Interactions
    vocabs: dict[str, np.ndarray] = field(default_factory=dict)  # name -> raw values (str)
    extra: dict[str, Any] = field(default_factory=dict)  # split parameters, provenance
    # derived attribute field -> counts + item CSR (target exclusion); optional on disk
    derived: dict[str, DerivedInfo] = field(default_factory=dict)

    # ---- sizes -------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def categorical_fields(self) -> list[FieldInfo]:
        return [f for f in self.fields if f.kind in ("univalent", "multivalent")]

    @property
    def continuous_fields(self) -> list[FieldInfo]:
        return [f for f in self.fields if f.kind == "continuous"]

    @property
    def history_field(self) -> str | None:
        for f in self.fields:
            if f.item_history:
                return f.name
        return None

    def item_popularity(self, splits: tuple[Split, ...] = (Split.TRAIN,)) -> np.ndarray:
        """Click count per item over the given splits, int64 (n_items,)."""
        from ralm.data.clicks import click_rows  # clicks.py imports this module

        it = self.interactions
        return np.bincount(it.item[click_rows(it, splits)], minlength=self.n_items).astype(np.int64)

    def item_popularity_rank(self) -> np.ndarray:
        """Rank of every item by training clicks (0 = most clicked), int64 (n_items,).

        Ties are broken by item index so the ranking is deterministic.
        """
        counts = self.item_popularity()
        order = np.lexsort((np.arange(self.n_items), -counts))  # most clicked first
        rank = np.empty(self.n_items, dtype=np.int64)
        rank[order] = np.arange(self.n_items)
        return rank

    # ---- I/O ---------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        root = Path(path)
        (root / "features").mkdir(parents=True, exist_ok=True)
        (root / "interactions").mkdir(exist_ok=True)
        (root / "vocab").mkdir(exist_ok=True)
        np.save(root / "user_ids.npy", self.user_ids.astype(str))
        np.save(root / "item_ids.npy", self.item_ids.astype(str))
        for name, codes in self.univalent.items():
            np.save(root / "features" / f"{name}.npy", np.asarray(codes, dtype=np.int64))
        for name, (offsets, values) in self.multivalent.items():
            np.save(root / "features" / f"{name}.offsets.npy", np.asarray(offsets, np.int64))
            np.save(root / "features" / f"{name}.values.npy", np.asarray(values, np.int64))
        for name, info in self.derived.items():
            for part in DERIVED_FILES:
                np.save(
                    root / "features" / f"{name}.{part}.npy",
                    np.asarray(getattr(info, part), np.int64),
                )
        np.save(root / "features" / "continuous.npy", np.asarray(self.continuous, np.float32))
        for name, vocab in self.vocabs.items():
            np.save(root / "vocab" / f"{name}.npy", np.asarray(vocab).astype(str))
        it = self.interactions
        for col, dtype in (
            ("user", np.int64),
            ("item", np.int64),
            ("ts", np.int64),
            ("label", np.int8),
            ("split", np.int8),
        ):
            np.save(root / "interactions" / f"{col}.npy", np.asarray(getattr(it, col), dtype))
        meta = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": len(it),
            "fields": [f.to_json() for f in self.fields],
            "extra": self.extra,
        }
        (root / "meta.json").write_text(json.dumps(meta, indent=2))
        log.info("wrote encoded dataset %s to %s", self.name, root)
        return root

    @classmethod
    def load(cls, path: str | Path, mmap: bool = True) -> EncodedDataset:
        root = Path(path)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{root} is not an encoded dataset (no meta.json); run `ralm data prepare` first"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path} is corrupted: {e}") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{root}: encoded dataset format {meta.get('format_version')} is not "
                f"supported (expected {FORMAT_VERSION}); re-run `ralm data prepare`"
            )
        mode: Literal["r"] | None = "r" if mmap else None

        def arr(rel: str) -> np.ndarray:
            p = root / rel
            if not p.is_file():
                raise FileNotFoundError(f"encoded dataset {root} is missing {rel}")
            return np.load(p, mmap_mode=mode, allow_pickle=False)

        fields = [FieldInfo(**f) for f in meta["fields"]]
        univalent = {f.name: arr(f"features/{f.name}.npy") for f in fields if f.kind == "univalent"}
        multivalent = {
            f.name: (arr(f"features/{f.name}.offsets.npy"), arr(f"features/{f.name}.values.npy"))
            for f in fields
            if f.kind == "multivalent"
        }
        derived: dict[str, DerivedInfo] = {}
        for f in fields:
            paths = [root / "features" / f"{f.name}.{part}.npy" for part in DERIVED_FILES]
            if f.kind == "multivalent" and all(p.is_file() for p in paths):
                derived[f.name] = DerivedInfo(
                    *(np.load(p, mmap_mode=mode, allow_pickle=False) for p in paths)
                )
        legacy = _legacy_derived_fields(meta)  # datasets written before the flag existed
        for f in fields:
            if f.name in legacy and f.kind == "multivalent" and not f.item_history:
                f.derived_from_items = True
        vocabs = {
            p.name[: -len(".npy")]: np.load(p, allow_pickle=False)
            for p in sorted((root / "vocab").glob("*.npy"))
        }
        inter = Interactions(
            **{c: arr(f"interactions/{c}.npy") for c in ("user", "item", "ts", "label", "split")}
        )
        ds = cls(
            name=meta["name"],
            user_ids=np.load(root / "user_ids.npy", allow_pickle=False),
            item_ids=np.load(root / "item_ids.npy", allow_pickle=False),
            fields=fields,
            univalent=univalent,
            multivalent=multivalent,
            continuous=arr("features/continuous.npy"),
            interactions=inter,
            vocabs=vocabs,
            extra=meta.get("extra", {}),
            derived=derived,
        )
        if ds.n_users != meta["n_users"] or ds.n_items != meta["n_items"]:
            raise ValueError(f"{root}: id maps do not match meta.json sizes; re-run prepare")
        for name, info in derived.items():
            if (
                info.counts.shape != multivalent[name][1].shape
                or info.item_offsets.shape != (ds.n_items + 1,)
                or info.item_values.shape != (int(info.item_offsets[-1]),)
            ):
                raise ValueError(
                    f"{root}: features/{name}.counts/item_* do not match the field; re-run prepare"
                )
        return ds


def _legacy_derived_fields(meta: dict[str, Any]) -> set[str]:
    """Names of item-attribute fields of a dataset written without the flag.

    Ingested datasets record their schema (``extra["schema"]["derived"]``); the synthetic
    fast path always derives ``categories``.
    """
    extra = meta.get("extra") or {}
    names = {
        d["name"]
        for d in (extra.get("schema") or {}).get("derived", [])
        if isinstance(d, dict) and d.get("source") != "item_id" and "name" in d
    }
    if extra.get("source") == "ralm.data.synth":
        names.add("categories")
    return names
