"""Per-epoch example selection, the leakage guard and validation recall."""

from __future__ import annotations

import numpy as np
import torch

from ralm.data.encoded import EncodedDataset, Split
from ralm.user import task as task_mod
from ralm.user.examples import epoch_examples, positive_pairs
from ralm.user.validation import ValidationSet, recall_at_k

from .helpers import train_tiny


def test_cap_per_user_and_resampling() -> None:
    users = np.repeat(np.arange(4), [120, 3, 50, 51])
    items = np.arange(users.size)
    u1, i1 = epoch_examples(users, items, 50, np.random.default_rng(0))
    u2, i2 = epoch_examples(users, items, 50, np.random.default_rng(1))
    np.testing.assert_array_equal(np.bincount(u1, minlength=4), [50, 3, 50, 50])
    np.testing.assert_array_equal(users[i1], u1)  # pairs stay intact
    assert set(i1[u1 == 0]) != set(i2[u2 == 0])  # the heavy user's kept rows are re-drawn
    assert len(set(i1[u1 == 1])) == 3  # light users keep everything


def test_positive_pairs_are_train_clicks(toy: EncodedDataset) -> None:
    u, i = positive_pairs(toy)
    it = toy.interactions
    m = (it.split == Split.TRAIN) & (it.label > 0)
    assert u.size == m.sum()
    assert not np.isin(i, it.item[it.mask(Split.COLD_SEED, Split.COLD_TEST)]).any()


def test_every_training_example_excludes_its_target(toy: EncodedDataset, monkeypatch) -> None:
    seen: list[tuple[np.ndarray, np.ndarray | None]] = []
    real = task_mod.gather_users

    def spy(ds, users, exclude_items=None):  # type: ignore[no-untyped-def]
        seen.append((np.asarray(users), exclude_items))
        batch = real(ds, users, exclude_items)
        values, offsets = batch.multivalent["history"]
        ends = torch.cat([offsets[1:], torch.tensor([values.numel()])])
        for r in range(len(users)):  # the target (item + 1) never appears in row r's bag
            assert int(exclude_items[r]) + 1 not in values[offsets[r] : ends[r]].tolist()
        return batch

    monkeypatch.setattr(task_mod, "gather_users", spy)
    train_tiny(toy, epochs=1, val_max_users=10)
    assert seen and all(ex is not None and len(ex) == len(u) for u, ex in seen)


def test_recall_at_k_matches_naive_loop() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, k = 7, 20, 5
    scores = torch.from_numpy(rng.normal(size=(n_users, n_items)))
    seen = [rng.choice(n_items, 3, replace=False) for _ in range(n_users)]
    targets = [rng.choice(np.setdiff1d(np.arange(n_items), s), 2, replace=False) for s in seen]

    def csr(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return np.r_[0, np.cumsum([len(r) for r in rows])], np.concatenate(rows)

    vs = ValidationSet(
        users=np.arange(n_users),
        targets=csr(targets),
        seen=csr(seen),
        loss_users=np.zeros(0, np.int64),
        loss_items=np.zeros(0, np.int64),
        loss_neg=np.zeros((0, 1), np.int64),
    )
    got = recall_at_k(lambda u: scores[u], vs, k, batch_size=3)
    ref = []
    for u in range(n_users):
        ranked = [j for j in np.argsort(-scores[u].numpy()) if j not in seen[u]][:k]
        ref.append(len(set(ranked) & set(targets[u])) / len(targets[u]))
    assert abs(got - float(np.mean(ref))) < 1e-12
