"""Index snapshots: immutability, chunk sharing, appends, strictly increasing versions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ralm.serve.index_holder import IndexHolder, IndexSnapshot, ItemUpdate


def _snap(n: int = 10, k: int = 3, h: int = 4, chunk: int = 4) -> IndexSnapshot:
    g = torch.Generator().manual_seed(0)
    cen = torch.randn(n, k, h, generator=g)
    return IndexSnapshot.from_arrays(
        1,
        [f"i{j}" for j in range(n)],
        cen,
        torch.ones(n, k, dtype=torch.bool),
        cen.mean(1),
        np.ones((n, k), np.int64),
        np.full(n, k),
        np.ones(n, bool),
        0.0,
        chunk_items=chunk,
    )


def _upd(ids: list[str], k: int = 3, h: int = 4) -> ItemUpdate:
    u = len(ids)
    cen = torch.full((u, k, h), 7.0)
    return ItemUpdate(
        ids,
        cen,
        torch.ones(u, k, dtype=torch.bool),
        cen.mean(1),
        np.full((u, k), 2),
        np.full(u, 2 * k),
        np.ones(u, bool),
        123.0,
    )


def test_from_arrays_is_a_view() -> None:
    cen = torch.randn(10, 3, 4)
    s = IndexSnapshot.from_arrays(
        1, [str(i) for i in range(10)], cen, torch.ones(10, 3, dtype=torch.bool), cen[:, 0],
        np.ones((10, 3), np.int64), np.ones(10), np.ones(10, bool), 0.0, chunk_items=4,
    )  # fmt: skip
    assert s.chunks[0].centroids.data_ptr() == cen.data_ptr()
    assert [len(c) for c in s.chunks] == [4, 4, 2]
    assert torch.allclose(s.chunks[1].gram, cen[4:8] @ cen[4:8].transpose(1, 2))


def test_update_copies_only_touched_chunks_and_keeps_old() -> None:
    old = _snap()
    before = old.table()[0].clone()
    new = old.updated(2, _upd(["i5", "new-a", "new-b"]))
    assert new.version == 2 and new.n_items == 12
    assert new.chunks[0] is old.chunks[0]  # untouched chunk shared, not copied
    assert new.chunks[1] is not old.chunks[1]
    assert torch.equal(old.table()[0], before)  # the old version is unchanged
    cen, _, _ = new.table()
    assert torch.all(cen[5] == 7) and torch.all(cen[10:] == 7)
    assert torch.equal(cen[:5], before[:5]) and torch.equal(cen[6:10], before[6:10])
    assert new.row_of["new-b"] == 11 and new.item_ids[10] == "new-a"
    assert new.sizes[11].tolist() == [2, 2, 2] and new.clustered_at[5] == 123.0
    assert torch.allclose(new.chunks[2].gram[2], cen[10] @ cen[10].T)
    c2, m2 = new.gather(np.array([11, 0]))
    assert torch.equal(c2[0], cen[11]) and torch.equal(c2[1], cen[0]) and bool(m2.all())


def test_update_from_empty() -> None:
    e = IndexSnapshot.empty(3, 4)
    s = e.updated(1, _upd(["a"]))
    assert s.n_items == 1 and s.n_servable == 1 and len(s.chunks) == 1


def test_holder_versions_strictly_increase() -> None:
    h = IndexHolder(_snap())
    s = h.current()
    with pytest.raises(ValueError, match="strictly increase"):
        h.publish(s)
    with pytest.raises(ValueError):
        s.updated(1, _upd(["x"]))
    h.publish(s.updated(5, _upd(["x"])))
    assert h.version == 5 and s.version == 1  # a reader holding s still sees version 1
