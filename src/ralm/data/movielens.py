"""MovieLens feature mapping in the RALM spirit (shared by the ML-100K and ML-1M readers).

User fields (all univalent, from the users table): ``gender``, ``age`` (the ML-1M age
buckets, also applied to ML-100K's exact ages), ``occupation``, ``zip`` (first two
characters of the zip code). Multivalent "interest" fields, derived from each user's
TRAIN-split clicks only: ``genres`` (genres of the movies the user rated) and ``history``
(the rated movie ids, the paper's "historically read article IDs"; ``item_history=True``).
Every rating is a click (label 1), whatever its value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ralm.data.ingest import RawData
from ralm.data.schema import DatasetSchema, schema_from_dict
from ralm.data.tables import TableSource
from ralm.data.transforms import apply_ops

# ML-1M README: age groups 1 "Under 18", 18 "18-24", 25 "25-34", 35 "35-44", 45 "45-49",
# 50 "50-55", 56 "56+". ML-100K's exact ages are bucketed on the same edges.
AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
AGE_LABELS = np.array(["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"])

# ML-100K u.genre, in the order of u.item's 19 genre flags.
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip

# ML-1M README occupation codes 0..20.
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip

ZIP_PREFIX_LEN = 2


def age_bucket(ages: pa.Array) -> pa.Array:
    """Exact ages (numbers or numeric strings) -> ML-1M bucket labels; null stays null."""
    return apply_ops(ages, movielens_transforms()["age"])


def zip_prefix(zips: pa.Array, n: int = ZIP_PREFIX_LEN) -> pa.Array:
    """First ``n`` characters of the zip code, upper-cased (US: the region of the code)."""
    return apply_ops(zips, [{"op": "upper"}, {"op": "prefix", "n": n}])


def movielens_schema(name: str) -> DatasetSchema:
    """The schema the MovieLens readers map onto (column names are the standard ones)."""
    return schema_from_dict(
        {
            "dataset": {"name": name},
            "files": {"interactions": "<ratings>", "users": "<users>", "items": "<items>"},
            "fields": [
                {"name": "gender", "kind": "univalent"},
                {"name": "age", "kind": "univalent"},
                {"name": "occupation", "kind": "univalent"},
                {"name": "zip", "kind": "univalent"},
            ],
            "derived": [
                {"name": "genres", "source": "item:genres"},
                {"name": "history", "source": "item_id"},
            ],
        },
        origin=f"<{name} schema>",
    )


def movielens_transforms(occupation_codes: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Raw-value transforms of the mapping, replayed by the FeatureEncoder for new users."""
    out: dict[str, list[dict[str, Any]]] = {
        "gender": [{"op": "upper"}],
        "age": [{"op": "bucket", "edges": AGE_EDGES.tolist(), "labels": AGE_LABELS.tolist()}],
        "zip": [{"op": "upper"}, {"op": "prefix", "n": ZIP_PREFIX_LEN}],
    }
    if occupation_codes:
        codes = {str(k): v for k, v in enumerate(ML1M_OCCUPATIONS)}
        out["occupation"] = [{"op": "map", "values": codes}]
    return out


def movielens_raw(
    name: str,
    ratings: pa.Table,
    users: pa.Table,
    items: pa.Table,
    sources: dict[str, TableSource],
    age_is_bucket: bool = False,
) -> RawData:
    """Map MovieLens tables onto the generic schema.

    Args:
        name: dataset name.
        ratings: ``user_id, item_id, timestamp`` (the rating value is ignored: every
            rating counts as a click).
        users: ``user_id, gender, age, occupation, zip``.
        items: ``item_id, genres`` (``list<string>``).
        sources: table role -> source, for error messages.
        age_is_bucket: ``age`` holds ML-1M bucket codes (1, 18, 25, ...) and
            ``occupation`` ML-1M codes 0..20 (mapped to names).

    Every raw-value change is one of :func:`movielens_transforms`, applied with
    :func:`ralm.data.transforms.apply_ops`, the engine the FeatureEncoder replays.
    """
    ops = movielens_transforms(occupation_codes=age_is_bucket)
    # ML-1M age codes 1, 18, 25, ... bucket to their own labels on the same edges
    columns = {"user_id": users["user_id"]}
    for name in ("gender", "age", "occupation", "zip"):
        columns[name] = apply_ops(users[name], ops.get(name, []))
    users = pa.table(columns)
    return RawData(
        schema=movielens_schema(name),
        interactions=ratings.select(["user_id", "item_id", "timestamp"]),
        users=users,
        items=items.select(["item_id", "genres"]),
        sources=sources,
        transforms=ops,
    )
