"""The one interface every compared model implements, plus shared helpers.

A :class:`Recommender` is trained once with :meth:`Recommender.fit` (TRAIN clicks only) and
then evaluated under one or more protocols. Before each protocol the evaluator calls
:meth:`Recommender.set_seed_splits` with the splits that may provide *seeds* (users known to
have clicked an item): ``(TRAIN,)`` for the warm protocol and ``(TRAIN, COLD_SEED)`` for
cold items. Look-alike models (Yahoo, RALM) rebuild their per-item seed sets from exactly
those splits; ID-based models (LR, YouTube DNN) cannot embed an item they never trained on
and fall back to a labelled, documented rule (see :class:`ItemFallback`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp

from ralm.data.clicks import seed_csr, split_clicks
from ralm.data.encoded import EncodedDataset, Split

log = logging.getLogger(__name__)

FallbackKind = Literal["popularity", "random"]


def clicks(ds: EncodedDataset, splits: tuple[Split, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Positive (user, item) rows of the given splits: int64 (n,), int64 (n,)."""
    return split_clicks(ds, splits)


def item_seed_csr(ds: EncodedDataset, splits: tuple[Split, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Seed users of every item from the given splits as CSR (offsets (I+1,), users (nnz,)).

    Each (user, item) pair counts once even when the log repeats it.
    """
    return seed_csr(ds, splits)


def click_matrix(ds: EncodedDataset, splits: tuple[Split, ...]) -> sp.csr_matrix:
    """Binary user x item matrix of the clicks in ``splits``, float64 CSR (n_users, n_items).

    Each (user, item) pair counts once even when the log repeats it.
    """
    offsets, users = item_seed_csr(ds, splits)
    items = np.repeat(np.arange(ds.n_items), np.diff(offsets))
    return sp.csr_matrix(
        (np.ones(users.size), (users, items)), shape=(ds.n_users, ds.n_items), dtype=np.float64
    )


class Recommender(ABC):
    """A model compared by the evaluator (contract 4 in docs/ARCHITECTURE.md).

    Subclasses implement :meth:`fit` and :meth:`score_users`; :meth:`score_pairs` has a
    generic implementation on top of :meth:`score_users`.

    Attributes:
        name: label used in report tables.
        seed_splits: splits the current protocol allows as seeds.
    """

    name: str = "model"

    def __init__(self) -> None:
        self.seed_splits: tuple[Split, ...] = (Split.TRAIN,)
        self._ds: EncodedDataset | None = None

    @property
    def ds(self) -> EncodedDataset:
        if self._ds is None:
            raise RuntimeError(f"{self.name}: call fit() first")
        return self._ds

    @abstractmethod
    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        """Train on the TRAIN clicks of ``ds`` (never VALID/TEST/COLD rows)."""

    def set_seed_splits(self, splits: tuple[Split, ...]) -> None:
        """Declare which splits may provide seeds for the next evaluation."""
        self.seed_splits = tuple(splits)

    def note(self) -> str | None:
        """A caveat shown in the report under the current seed splits (e.g. a fallback)."""
        return None

    @abstractmethod
    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of every (user, item) combination, float (B, I); higher = better."""

    @property
    def supports_seeded_items(self) -> bool:
        """True when the model implements :meth:`score_seeded_items` (the copy test)."""
        return type(self).score_seeded_items is not Recommender.score_seeded_items

    def score_seeded_items(self, users: np.ndarray, seed_sets: Sequence[np.ndarray]) -> np.ndarray:
        """Scores of hypothetical new items known only by their seed users, float (B, S).

        Optional hook (the copy test of ``ralm.evaluation.protocols`` uses it): item ``s`` is
        a brand-new item whose clickers are ``seed_sets[s]`` (user indices); every other
        item keeps its current state under the current seed splits. Scores must be on the
        same scale as :meth:`score_users`, so the new item can be ranked among the others.

        Args:
            users: int64 (B,) users to score for.
            seed_sets: S arrays of seed user indices, one per hypothetical item.
        """
        raise NotImplementedError(f"{self.name} cannot score an item from its seeds alone")

    def score_pairs(self, users: np.ndarray, items: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Score of each (users[n], items[n]) pair, float64 (n,)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        out = np.empty(users.shape[0], dtype=np.float64)
        uniq_items, item_col = np.unique(items, return_inverse=True)
        uniq_users, user_row = np.unique(users, return_inverse=True)
        for a in range(0, uniq_users.size, chunk):
            sel = (user_row >= a) & (user_row < a + chunk)
            if not sel.any():
                continue
            s = self.score_users(uniq_users[a : a + chunk], uniq_items)  # (b, I')
            out[sel] = s[user_row[sel] - a, item_col[sel]]
        return out


class RandomRecommender(Recommender):
    """Uniform random scores: the floor every real model must beat.

    Args:
        seed: seeds the score generator (re-seeded by :meth:`fit`).
    """

    name = "Random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self._rng = np.random.default_rng(seed)

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        self._ds = ds
        self._rng = np.random.default_rng(seed)

    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self._rng.random((len(users), len(items)))


class ItemFallback:
    """Scores for items an ID-based model never trained on (no TRAIN click).

    ``popularity``: the item's click count in the current seed splits (for cold items: the
    seeding window), so the model degrades to the Popularity baseline on such items;
    ``random``: seeded uniform noise. Known items keep the model's own scores; the two
    groups are not calibrated against each other, so mixed candidate sets rank all
    unknown items by the fallback below every known item.

    Args:
        ds: the dataset the model was fitted on.
        kind: ``"popularity"`` or ``"random"``.
        seed: seeds the random fallback.
    """

    def __init__(self, ds: EncodedDataset, kind: FallbackKind = "popularity", seed: int = 0):
        self.kind = kind
        self.known = ds.item_popularity((Split.TRAIN,)) > 0  # bool (n_items,)
        self._ds = ds
        self._rng = np.random.default_rng(seed)
        self._pop = ds.item_popularity((Split.TRAIN,)).astype(np.float64)

    def set_seed_splits(self, splits: tuple[Split, ...]) -> None:
        self._pop = self._ds.item_popularity(tuple(splits)).astype(np.float64)

    def apply(self, scores: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Replace the columns of unknown items in ``scores (B, I)``."""
        items = np.asarray(items, dtype=np.int64)
        unknown = ~self.known[items]  # (I,)
        if not unknown.any():
            return scores
        scores = np.array(scores, dtype=np.float64, copy=True)
        floor = scores[:, ~unknown].min() - 1.0 if (~unknown).any() else 0.0
        if self.kind == "popularity":
            fb = np.log1p(self._pop[items[unknown]])  # (I_unknown,)
            fb = fb / (fb.max() + 1.0)  # in [0, 1): stays below every known item
        else:
            fb = self._rng.random((scores.shape[0], int(unknown.sum())))
        scores[:, unknown] = floor - 1.0 + fb
        return scores

    def note(self, name: str, items_unknown: bool) -> str | None:
        if not items_unknown:
            return None
        what = "seed-window popularity" if self.kind == "popularity" else "random scores"
        return f"{name} cannot embed items without TRAIN clicks; they get {what} (fallback)."


class IdBasedRecommender(Recommender):
    """A model that scores items by a learned item-ID parameter (LR, YouTube DNN).

    Items without TRAIN clicks have no trained parameter; subclasses set
    ``self.fallback`` in :meth:`fit` and pass their scores through
    ``self.fallback.apply``. This class keeps the fallback in step with the protocol's
    seed splits and reports it in the evaluation notes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fallback: ItemFallback | None = None

    def set_seed_splits(self, splits: tuple[Split, ...]) -> None:
        super().set_seed_splits(splits)
        if self.fallback is not None:
            self.fallback.set_seed_splits(splits)

    def note(self) -> str | None:
        assert self.fallback is not None
        return self.fallback.note(self.name, Split.COLD_SEED in self.seed_splits)
