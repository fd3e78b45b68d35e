"""Popularity: every user gets the items with the most seed clicks (the floor)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ralm.data.encoded import EncodedDataset, Split
from ralm.evaluation.baselines.base import Recommender


class Popularity(Recommender):
    """Score = number of clicks of the item in the allowed seed splits.

    Under the warm protocol that is the TRAIN click count; under the cold protocol cold
    items are ranked by their clicks in the seeding window (COLD_SEED).
    """

    name = "Popularity"

    def __init__(self) -> None:
        super().__init__()
        self._counts = np.zeros(0)

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        self._ds = ds
        self.set_seed_splits((Split.TRAIN,))

    def set_seed_splits(self, splits: tuple[Split, ...]) -> None:
        super().set_seed_splits(splits)
        if self._ds is not None:
            self._counts = self._ds.item_popularity(self.seed_splits).astype(np.float64)

    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        row = self._counts[np.asarray(items, dtype=np.int64)]  # (I,)
        return np.broadcast_to(row, (len(users), row.shape[0])).copy()

    def score_seeded_items(self, users: np.ndarray, seed_sets: Sequence[np.ndarray]) -> np.ndarray:
        row = np.asarray([np.unique(np.asarray(s)).size for s in seed_sets], dtype=np.float64)
        return np.broadcast_to(row, (len(users), row.size)).copy()  # (B, S)
