"""The encoded dataset round-trips through disk and batches are built correctly."""

from pathlib import Path

import numpy as np
import pytest

from ralm.data.batching import gather_csr, gather_users
from ralm.data.encoded import EncodedDataset, Split
from ralm.data.toy import make_toy_dataset


def test_roundtrip(tmp_path: Path) -> None:
    ds = make_toy_dataset(seed=1)
    ds.save(tmp_path / "toy")
    back = EncodedDataset.load(tmp_path / "toy")
    assert back.n_users == ds.n_users and back.n_items == ds.n_items
    np.testing.assert_array_equal(back.interactions.item, ds.interactions.item)
    np.testing.assert_array_equal(back.multivalent["history"][1], ds.multivalent["history"][1])
    assert back.history_field == "history"
    assert [f.kind for f in back.fields] == ["univalent", "multivalent", "continuous"]


def test_load_missing_folder_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ralm data prepare"):
        EncodedDataset.load(tmp_path)


def test_cold_items_never_in_train() -> None:
    ds = make_toy_dataset(seed=2)
    it = ds.interactions
    cold = np.unique(it.item[it.mask(Split.COLD_SEED, Split.COLD_TEST)])
    assert cold.size > 0
    assert not np.isin(cold, it.item[it.mask(Split.TRAIN, Split.VALID, Split.TEST)]).any()


def test_popularity_rank_is_a_permutation_most_clicked_first() -> None:
    ds = make_toy_dataset(seed=3)
    rank = ds.item_popularity_rank()
    counts = ds.item_popularity()
    assert sorted(rank.tolist()) == list(range(ds.n_items))
    assert counts[rank == 0][0] == counts.max()


def test_gather_csr_matches_python_slicing() -> None:
    offsets = np.array([0, 2, 2, 5, 6])
    values = np.array([10, 11, 20, 21, 22, 30])
    rows = np.array([2, 0, 1, 2, 3])
    got, lengths = gather_csr(offsets, values, rows)
    ref = np.concatenate([values[offsets[r] : offsets[r + 1]] for r in rows])
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(lengths, [3, 2, 0, 3, 1])


def test_target_is_excluded_from_history() -> None:
    ds = make_toy_dataset(seed=4)
    it = ds.interactions
    train = np.flatnonzero(it.split == Split.TRAIN)[:50]
    users, items = it.user[train], it.item[train]
    batch = gather_users(ds, users, exclude_items=items)
    values, offsets = batch.multivalent["history"]
    ends = np.append(offsets.numpy()[1:], values.numel())
    for r in range(len(users)):
        bag = values.numpy()[offsets[r] : ends[r]]
        assert items[r] + 1 not in bag  # the target never appears in its own history
        full = ds.multivalent["history"]
        ref = full[1][full[0][users[r]] : full[0][users[r] + 1]]
        assert bag.size == ref.size - 1  # exactly the target was removed
