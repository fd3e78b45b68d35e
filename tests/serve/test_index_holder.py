"""The index holder: one reference swap, strictly increasing versions, readers keep theirs."""

from __future__ import annotations

import numpy as np
import pytest

from ralm.lookalike.seed_index import IndexUpdate, SeedIndex
from ralm.serve.index_holder import IndexHolder


def _upd(ids: list[str], k: int = 3, h: int = 4) -> IndexUpdate:
    u = len(ids)
    cen = np.full((u, k, h), 7.0, np.float32)
    return IndexUpdate(
        item_ids=np.asarray(ids), centroids=cen, mask=np.ones((u, k), bool),
        sizes=np.full((u, k), 2, np.int64), global_vec=cen.mean(1),
        gram=cen @ cen.transpose(0, 2, 1), n_seeds=np.full(u, 2 * k, np.int64),
        servable=np.ones(u, bool), clustered_at=np.full(u, 123.0),
    )  # fmt: skip


def test_holder_versions_strictly_increase() -> None:
    h = IndexHolder(SeedIndex.from_update(_upd(["a", "b"]), version=1))
    s = h.current()
    with pytest.raises(ValueError, match="strictly increase"):
        h.publish(s)
    with pytest.raises(ValueError):
        s.updated(_upd(["x"]), version=1)
    h.publish(s.updated(_upd(["x"]), version=5))
    assert h.version == 5 and s.version == 1  # a reader holding s still sees version 1
    assert s.n_items == 2 and h.current().n_items == 3
