"""Neighbourhood references: item-kNN and user-kNN look-alike on co-clicks (cosine).

Both read one matrix, the binary user x item clicks ``X`` of the protocol's seed splits
(see :meth:`Recommender.set_seed_splits`), so the same model is the classic warm reference
under the warm protocol (``X`` = TRAIN clicks) and a seed-based cold-item model under the
cold and mixed protocols (``X`` = TRAIN + COLD_SEED: a cold item's column holds its seeds):

- **item-kNN** (Sarwar et al. 2001; Deshpande & Karypis 2004):
  ``sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|)`` (cosine of item columns, ``sim(j, j) = 0``),
  each candidate ``j`` keeps its ``neighbours`` most similar items, and
  ``score(u, j) = Σ_{i ∈ H_u ∩ N(j)} sim(i, j)`` over the user's clicked items ``H_u``. On a
  cold item this is "warm history x seed co-clicks": the seeds' other clicks link the new
  item to the items of the user's history.
- **user-kNN look-alike**: ``sim(u, v)`` the cosine of user rows (co-clicked items),
  ``sim(u, u) = 0``; each target user keeps its ``neighbours`` most similar users and
  ``score(u, j) = Σ_{v ∈ N(u) ∩ seeds(j)} sim(u, v)`` — how much of the user's look-alike
  neighbourhood is in the item's seed audience.

``neighbours = 100`` is a common literature default for both (not tuned here); ``None``
keeps every neighbour. Both implement :meth:`Recommender.score_seeded_items`, so they take
part in the copy test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from ralm.data.encoded import EncodedDataset, Split
from ralm.evaluation.baselines.base import Recommender, click_matrix


class KNNConfig(BaseModel):
    """Hyper-parameters of the item-kNN and user-kNN references."""

    model_config = ConfigDict(extra="forbid")

    neighbours: int | None = Field(
        default=100, ge=1, description="Neighbours kept per item / user (None = all)."
    )


def prune_rows(m: sp.csr_matrix, k: int | None) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of every row (ties: lower column first), CSR."""
    m = sp.csr_matrix(m)
    m.eliminate_zeros()
    if k is None:
        return m
    row = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))  # (nnz,)
    order = np.lexsort((m.indices, -m.data, row))  # by row, value desc, column asc
    rank = np.arange(order.size) - m.indptr[row[order]]
    keep = order[rank < k]
    return sp.csr_matrix((m.data[keep], (row[keep], m.indices[keep])), shape=m.shape)


def top_k_dense(sims: np.ndarray, k: int | None) -> np.ndarray:
    """Zero all but the ``k`` largest entries of every row of a dense (B, N) array.

    Ties at the cut-off are broken towards the lower column, as :func:`prune_rows`.
    """
    if k is None or k >= sims.shape[1]:
        return sims
    order = np.argsort(-sims, axis=1, kind="stable")  # ties: lower column first
    out = np.zeros_like(sims)
    rows = np.arange(sims.shape[0])[:, None]
    out[rows, order[:, :k]] = sims[rows, order[:, :k]]
    return out


def _cosine_norm(counts: np.ndarray) -> np.ndarray:
    """1 / sqrt(count), 0 where the count is 0."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0)


class _CoClickKNN(Recommender):
    """Shared fit logic of the co-click kNN references: rebuilt when the seed splits change.

    Args:
        config: number of neighbours kept.
    """

    def __init__(self, config: KNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or KNNConfig()
        self._built_for: tuple[Split, ...] | None = None

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        self._ds, self._built_for = ds, None
        self.set_seed_splits((Split.TRAIN,))

    def set_seed_splits(self, splits: tuple[Split, ...]) -> None:
        super().set_seed_splits(splits)
        if self._ds is None or self._built_for == self.seed_splits:
            return  # already built from these splits
        self._built_for = self.seed_splits
        self._build(click_matrix(self.ds, self.seed_splits))  # (U, I)

    def _build(self, x: sp.csr_matrix) -> None:
        raise NotImplementedError


class ItemKNN(_CoClickKNN):
    """Item-based kNN on cosine co-click similarity (see the module docstring).

    Args:
        config: number of neighbours kept per candidate item.
    """

    name = "item-kNN"

    def _build(self, x: sp.csr_matrix) -> None:
        self.x = x  # (U, I)
        self.item_norm = _cosine_norm(np.asarray(self.x.sum(axis=0)).ravel())  # (I,)
        co = (self.x.T @ self.x).tocsr()  # (I, I) co-clicks
        co = (co - sp.diags(co.diagonal())).tocsr()  # sim(j, j) = 0
        d = sp.diags(self.item_norm)
        sim = (d @ co @ d).tocsr()  # (I, I) symmetric cosine
        self.neigh = prune_rows(sim, self.config.neighbours)  # row j: neighbours of item j

    def note(self) -> str | None:
        if Split.COLD_SEED in self.seed_splits:
            return (
                f"{self.name} links a cold item to the user's history through its seeds' "
                "co-clicks (item-kNN with seeds; no retraining)."
            )
        return None

    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        return np.asarray((self.x[users] @ self.neigh[items].T).toarray())  # (B, I)

    def score_seeded_items(self, users: np.ndarray, seed_sets: Sequence[np.ndarray]) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        rows = []
        for seeds in seed_sets:
            s = np.unique(np.asarray(seeds, dtype=np.int64))
            co = np.asarray(self.x[s].sum(axis=0)).ravel()  # (I,) co-clicks with the new item
            sim = co * self.item_norm / np.sqrt(max(s.size, 1))  # (I,)
            rows.append(sim)
        neigh = prune_rows(sp.csr_matrix(np.vstack(rows)), self.config.neighbours)  # (S, I)
        return np.asarray((self.x[users] @ neigh.T).toarray())  # (B, S)


class UserKNN(_CoClickKNN):
    """User-kNN look-alike: the user's nearest co-click neighbours among an item's seeds.

    Args:
        config: number of neighbours kept per target user.
    """

    name = "user-kNN look-alike"

    def _build(self, x: sp.csr_matrix) -> None:
        self.x = x
        self.xt = x.T.tocsr()  # (I, U): seeds of every item
        d = sp.diags(_cosine_norm(np.asarray(x.sum(axis=1)).ravel()))
        self.xn = (d @ x).tocsr()  # (U, I) rows scaled to unit norm

    def neighbours(self, users: np.ndarray) -> np.ndarray:
        """Pruned cosine similarities of ``users`` to every user, float64 (B, n_users)."""
        users = np.asarray(users, dtype=np.int64)
        sims = np.asarray((self.xn[users] @ self.xn.T).toarray())  # (B, U)
        sims[np.arange(users.size), users] = 0.0  # a user is not its own look-alike
        return top_k_dense(sims, self.config.neighbours)

    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        sims = self.neighbours(users)  # (B, U)
        return np.asarray((self.xt[items] @ sims.T).T)  # (B, I)

    def score_seeded_items(self, users: np.ndarray, seed_sets: Sequence[np.ndarray]) -> np.ndarray:
        sims = self.neighbours(users)  # (B, U)
        cols = [sims[:, np.unique(np.asarray(s, dtype=np.int64))].sum(axis=1) for s in seed_sets]
        return np.stack(cols, axis=1)  # (B, S)
