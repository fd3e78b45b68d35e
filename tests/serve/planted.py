"""A planted serving model for tests: users in taste groups with known embeddings.

The scorer is the real stage-2 ``LookalikeModel`` (untrained, seeded); only the user side is
planted: user ``u{i}`` belongs to group ``i % n_groups`` and its universal embedding is the
group centre plus small noise, and a new user's raw feature ``{"group": "g<j>"}`` maps to
centre j. Users of one group therefore look alike and other groups do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ralm.errors import DataError
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel
from ralm.serve.runtime import ServingModel, TableEmbedder

N_GROUPS = 3


def planted_centres(m: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(N_GROUPS, m)) * 2.0).astype(np.float32)  # (G, m)


def planted_model(
    n_users: int = 300, m: int = 16, h: int = 16, k: int = 4, seed: int = 0, **kw: Any
) -> ServingModel:
    """A ServingModel over ``n_users`` planted users (ids ``u0..``)."""
    rng = np.random.default_rng(seed + 1)
    centres = planted_centres(m, seed)
    group = np.arange(n_users) % N_GROUPS
    table = centres[group] + 0.3 * rng.normal(size=(n_users, m)).astype(np.float32)

    def features(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        out = np.zeros((len(records), m), dtype=np.float32)
        for r, rec in enumerate(records):
            g = str(rec.get("group", ""))
            if not g.startswith("g") or not g[1:].isdigit():
                raise DataError(f"features.group: expected 'g<number>', got {g!r}")
            j = int(g[1:])
            out[r] = centres[j] if j < N_GROUPS else 0.0  # unknown value -> OOV (zero)
        return out

    torch.manual_seed(seed)
    backend = kw.pop("kmeans_backend", "faiss")
    scorer = LookalikeModel(LookalikeConfig(m=m, h=h, k=k, kmeans_backend=backend)).eval()
    emb = TableEmbedder(np.asarray([f"u{i}" for i in range(n_users)]), table, features)
    return ServingModel(scorer=scorer, embedder=emb, **kw)


def group_users(group: int, n: int, start: int = 0) -> list[str]:
    """n user ids of one planted group."""
    return [f"u{i}" for i in range(start, 10_000) if i % N_GROUPS == group][:n]
