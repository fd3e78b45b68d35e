"""Seed rows on disk (:class:`ralm.lookalike.seed_rows.SeedRows`) and chunked clustering.

Stage 2 no longer keeps the (S, h) table of transformed seeds in memory: it is written to
a temporary file, clustered chunk by chunk of items (:func:`cluster_rows`), and
leave-self-out reads the rows it needs. These tests check, bitwise, that the rows read are
the table's, that chunked clustering gives one call's clusters, and that a whole training
run gives the same model, history, seed index and calibration as a run that keeps the
table in memory (the previous behaviour, rebuilt here with one plain torch call per GEMM).
"""

from __future__ import annotations

import itertools
import os
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset
from ralm.lookalike import stage as stage_mod
from ralm.lookalike.clustering import SeedClusters
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.index_builder import item_chunks
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import seed_sets
from ralm.lookalike.seed_index import ROW_ARRAYS, cluster_for_model, cluster_rows
from ralm.lookalike.seed_rows import SeedRows, transform_rows
from ralm.lookalike.train import train_lookalike

M = 12  # width of the `universal` fixture in conftest.py


def _model(m: int, h: int, seed: int = 0) -> LookalikeModel:
    torch.manual_seed(seed)
    return LookalikeModel(LookalikeConfig(m=m, h=h, k=3))


def _reference_table(model: LookalikeModel, universal: np.ndarray, users: np.ndarray, batch: int):
    """The table as the old code built it: one plain ``model.transform`` per GEMM."""
    parts = []
    with torch.no_grad():
        for lo in range(0, users.size, batch):
            x = torch.from_numpy(np.ascontiguousarray(universal[users[lo : lo + batch]]))
            parts.append(model.transform(x).numpy())
    return np.concatenate(parts)


@pytest.mark.parametrize(
    ("n_rows", "batch"),
    [(7, 65536), (40, 65536), (205, 100), (216, 100), (300, 100), (1000, 64)],
)
def test_rows_equal_the_table_bitwise(n_rows: int, batch: int, tmp_path) -> None:
    rng = np.random.default_rng(n_rows)
    universal = rng.normal(size=(500, 24)).astype(np.float32)
    users = rng.integers(0, 500, size=n_rows)
    model = _model(24, 16)
    ref = _reference_table(model, universal, users, batch)
    rows = SeedRows.build(model.transform_layer, universal, users, 16, batch, tmp_path)
    assert os.listdir(tmp_path) == []  # the file has no name: nothing left behind
    np.testing.assert_array_equal(transform_rows(model.transform_layer, universal, users, 16,
                                                 batch), ref)  # fmt: skip
    table = rows.table()
    np.testing.assert_array_equal(table, ref)
    assert table.dtype == np.float32 and rows.shape == (n_rows, 16) and len(rows) == n_rows
    # any subset, size, order and repeats; runs of consecutive rows; ranges
    for size in [1, 2, 3, 5, 16, 17, 64, n_rows]:
        pick = rng.integers(0, n_rows, size=size)
        np.testing.assert_array_equal(rows[pick], ref[pick], err_msg=f"{size} rows")
    run = np.r_[np.arange(2, min(9, n_rows)), 0, 0, n_rows - 1]
    np.testing.assert_array_equal(rows[run], ref[run])
    np.testing.assert_array_equal(rows.range(1, n_rows - 1), ref[1 : n_rows - 1])
    assert rows[np.zeros(0, np.int64)].shape == (0, 16) and rows.range(3, 3).shape == (0, 16)
    with pytest.raises(IndexError):
        rows[np.array([n_rows])]
    with pytest.raises(IndexError):
        rows.range(0, n_rows + 1)
    rows.close()
    with pytest.raises((OSError, ValueError)):
        rows.range(0, 1)


def _rss_file_kib() -> int:
    """This process's resident file-backed pages (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")
    return 0


def test_scattered_reads_do_not_keep_the_table_resident(monkeypatch, tmp_path) -> None:
    """Rows read through the memory map equal the table, and its pages leave the resident
    set every ``DROP_ROWS`` rows: 20,000 random rows of a 64 MiB table would map all of
    it (each read maps up to 64 KiB around its row), but the process keeps a few MiB."""
    import ralm.lookalike.seed_rows as sr

    rng = np.random.default_rng(0)
    n, h = 131072, 128  # 64 MiB
    table = rng.normal(size=(n, h)).astype(np.float32)
    rows = SeedRows.from_array(table, tmp_path)
    monkeypatch.setattr(sr, "DROP_ROWS", 64)
    base = _rss_file_kib()
    peak = base
    for _ in range(200):
        pick = rng.integers(0, n, size=100)
        np.testing.assert_array_equal(rows[pick], table[pick])
        peak = max(peak, _rss_file_kib())
    assert peak - base < 24 * 1024, f"resident file pages grew by {peak - base} KiB"
    rows.close()
    with pytest.raises((OSError, ValueError)):
        rows[np.array([0])]


def test_rows_are_the_table_of_their_time() -> None:
    rng = np.random.default_rng(0)
    universal = rng.normal(size=(50, 8)).astype(np.float32)
    users = np.arange(50)
    model = _model(8, 8)
    before = _reference_table(model, universal, users, 65536)
    rows = SeedRows.of_model(model, universal, users)
    with torch.no_grad():  # training moves the layer on; the stored rows stay
        model.transform_layer.fc.weight.add_(1.0)
    np.testing.assert_array_equal(rows[np.arange(50)], before)
    np.testing.assert_array_equal(SeedRows.from_array(before).table(), before)
    with pytest.raises(ValueError, match="written"):
        SeedRows(3, 8).table()


class _TableRows:
    """The previous behaviour: the whole (S, h) table kept in memory, rows read from it."""

    made: ClassVar[list[int]] = []

    def __init__(self, table: np.ndarray) -> None:
        self._table, self.h = table, table.shape[1]

    @classmethod
    def of_model(cls, model: LookalikeModel, universal: np.ndarray, users: np.ndarray):
        cls.made.append(users.size)
        return cls(_reference_table(model, universal, users, 65536))

    def table(self) -> np.ndarray:
        return self._table

    def range(self, lo: int, hi: int) -> np.ndarray:
        return self._table[lo:hi]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self._table[rows]

    def close(self) -> None:
        pass


def _run(toy: EncodedDataset, universal, lookup, tc: LookalikeTrainConfig, tmp) -> Any:
    return train_lookalike(toy, LookalikeConfig(m=M, h=8, k=3), universal, lookup, tmp, tc)


def _old_clustering(model, rows, offsets, init=None, seed=0, **kw: Any) -> SeedClusters:
    """What training called before: one clustering of the whole in-memory table."""
    return cluster_for_model(model, rows.table(), offsets, init=init, seed=seed)


@pytest.mark.parametrize(("loss", "chunk_rows"), [("softmax", 0), ("bce", 0), ("softmax", 150)])
def test_training_with_rows_on_disk_equals_keeping_the_table(
    toy: EncodedDataset, universal, lookup, tmp_path, monkeypatch, loss: str, chunk_rows: int
) -> None:
    tc = LookalikeTrainConfig(epochs=2, batch_size=64, patience=0, loss=loss)
    if chunk_rows:  # cluster in chunks of items of at most chunk_rows seed rows
        assert len(item_chunks(seed_sets(toy).offsets, chunk_rows)) > 5
        monkeypatch.setattr(stage_mod, "cluster_rows", partial(cluster_rows, max_rows=chunk_rows))
    lean = _run(toy, universal, lookup, tc, tmp_path / "lean")
    _TableRows.made.clear()
    monkeypatch.setattr(stage_mod, "SeedRows", _TableRows)
    monkeypatch.setattr(stage_mod, "cluster_rows", _old_clustering)
    kept = _run(toy, universal, lookup, tc, tmp_path / "kept")
    assert len(_TableRows.made) == 4  # 3 clusterings + calibration used the reference
    for k, v in kept.model.state_dict().items():
        torch.testing.assert_close(lean.model.state_dict()[k], v, atol=0, rtol=0)
    for a, b in zip(lean.history, kept.history, strict=True):  # float64 sums of chunks
        assert a.pop("inertia") == pytest.approx(b.pop("inertia"), rel=1e-9)
        assert a.pop("inertia_change") == pytest.approx(b.pop("inertia_change"), rel=1e-6)
    timing = {"seconds", "samples_per_s", "kmeans_s"}

    def untimed(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in timing} for r in history]

    assert untimed(lean.history) == untimed(kept.history)  # loss, AUC, ECE, inertia, recall
    assert {"loss", "val_auc", "val_ece", "recall"} <= set(lean.history[-1])
    assert lean.calibration == kept.calibration and lean.calibration
    for name in ("item_ids", *ROW_ARRAYS):
        if name != "clustered_at":
            a, b = getattr(lean.seed_index, name), getattr(kept.seed_index, name)
            np.testing.assert_array_equal(a, b, err_msg=name)


def _chunked_vs_whole(cfg: LookalikeConfig, warm: bool, max_rows: int) -> None:
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 40, size=30)
    counts[[3, 11]] = [0, 130]  # an empty item and one larger than a chunk
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    universal = rng.normal(size=(400, cfg.m)).astype(np.float32)
    users = rng.integers(0, 400, size=int(offsets[-1]))
    torch.manual_seed(0)
    model = LookalikeModel(cfg)
    table = _reference_table(model, universal, users, 65536)
    prev = None
    if warm:  # the previous clustering, from other weights, some slots masked
        prev = cluster_for_model(model, table * 1.5, offsets, seed=3)
        prev.mask[::4, 0] = False
    whole = cluster_for_model(model, table, offsets, init=prev, seed=5)
    rows = SeedRows.of_model(model, universal, users)
    assert len(item_chunks(offsets, max_rows)) > 3
    got = cluster_rows(model, rows, offsets, init=prev, seed=5, max_rows=max_rows)
    for name in ("centroids", "mask", "sizes", "assign"):
        a, b = getattr(got, name), getattr(whole, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert got.inertia == pytest.approx(whole.inertia, rel=1e-9)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("k_rule", ["fixed", "seeds"])
def test_clustering_chunk_by_chunk_equals_one_call(backend: str, warm: bool, k_rule: str) -> None:
    cfg = LookalikeConfig(m=10, h=8, k=4, kmeans_backend=backend, k_rule=k_rule)
    _chunked_vs_whole(cfg, warm, max_rows=50)


def test_item_chunks_cover_every_item_within_the_row_budget() -> None:
    offsets = np.r_[0, np.cumsum([5, 0, 7, 30, 1, 1, 0, 9])].astype(np.int64)
    chunks = item_chunks(offsets, 10)
    assert chunks[0][0] == 0 and chunks[-1][1] == offsets.size - 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    for lo, hi in chunks:
        assert offsets[hi] - offsets[lo] <= 10 or hi == lo + 1
    assert item_chunks(offsets, 10**6) == [(0, offsets.size - 1)]
    assert item_chunks(np.zeros(1, np.int64), 10) == []
