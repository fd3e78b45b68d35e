"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data").

A closed-form item-item model: with ``X`` the binary user x item clicks of the seed splits
and ``G = XᵀX``,

    B = argmin ||X - X B||² + λ ||B||²  subject to diag(B) = 0
      = I - P · diag(1 / diag(P)),       P = (G + λ I)⁻¹

and ``score(u, j) = X_u · B[:, j]``. The solve is dense (I x I, float64): fine up to
``max_items`` (20,000 items = 3.2 GB per matrix); above it :meth:`EASE.fit` stops with a
:class:`ralm.errors.ConfigError` that says so instead of swapping the machine to death.

λ: Steck reports λ = 500 on ML-20M (and 1,000 on Netflix, 200 on MSD). λ acts against the
diagonal of ``G`` (each item's click count), so the default scales it with the data:
``λ = l2_per_click x mean(diag G)``, and ``l2_per_click = 1`` gives λ ≈ 500 at ML-20M's
density (mean 497 clicks per item) — the literature value, not tuned here. ``l2`` sets λ
outright.

EASE learns one column per item, so an item without clicks in the seed splits has none.
Under the cold and mixed protocols it is re-solved on TRAIN + COLD_SEED, i.e. retrained
with the cold items' seeds (closed form, a second); the report says so. For the copy test
(:meth:`EASE.score_seeded_items`) a new item with seed set ``s`` gets the column it would
have in the model re-solved with it: by the block inverse, ``B[:, new] = P g`` with
``g = Xᵀ 1_s`` its co-clicks (the other items' columns are kept as they are).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ralm.data.encoded import EncodedDataset, Split
from ralm.errors import ConfigError
from ralm.evaluation.baselines.base import Recommender, click_matrix

log = logging.getLogger(__name__)


class EASEConfig(BaseModel):
    """Hyper-parameters of the EASE reference."""

    model_config = ConfigDict(extra="forbid")

    l2: float | None = Field(
        default=None, gt=0, description="λ outright (None = l2_per_click x mean item clicks)."
    )
    l2_per_click: float = Field(
        default=1.0, gt=0, description="λ per mean item click count (1 = λ 500 on ML-20M)."
    )
    max_items: int = Field(
        default=20_000, ge=1, description="Largest catalogue solved densely (I x I float64)."
    )


def ease_weights(g: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """EASE's closed form from the Gram matrix ``g (I, I)``: ``(B (I, I), P (I, I))``."""
    a = np.array(g, dtype=np.float64, copy=True)
    a[np.diag_indices_from(a)] += lam
    p = np.linalg.inv(a)  # (I, I)
    b = -p / np.diag(p)[None, :]  # B = I - P diag(1/diag P): off-diagonal -P_ij / P_jj
    b[np.diag_indices_from(b)] = 0.0
    return b, p


class EASE(Recommender):
    """EASE on the clicks of the current seed splits.

    Args:
        config: λ and the dense-solve limit.
    """

    name = "EASE"

    def __init__(self, config: EASEConfig | None = None) -> None:
        super().__init__()
        self.config = config or EASEConfig()
        self._built_for: tuple[Split, ...] | None = None
        self.lam = 0.0

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        if ds.n_items > self.config.max_items:
            raise ConfigError(
                f"EASE: {ds.n_items} items > ease.max_items = {self.config.max_items} "
                f"(the dense {ds.n_items} x {ds.n_items} solve needs "
                f"~{3 * 8 * ds.n_items**2 / 1e9:.0f} GB); drop `ease` from the models or "
                "raise [ease] max_items"
            )
        self._ds, self._built_for = ds, None
        self.set_seed_splits((Split.TRAIN,))

    def note(self) -> str | None:
        if Split.COLD_SEED in self.seed_splits:
            return (
                f"{self.name} is re-solved on TRAIN + COLD_SEED clicks here, i.e. retrained "
                "with the cold items' seeds (closed form)."
            )
        return None

    def set_seed_splits(self, splits: tuple[Split, ...]) -> None:
        super().set_seed_splits(splits)
        if self._ds is None or self._built_for == self.seed_splits:
            return  # already built from these splits
        self._built_for = self.seed_splits
        self.x = click_matrix(self.ds, self.seed_splits)  # (U, I)
        g = np.asarray((self.x.T @ self.x).toarray())  # (I, I)
        diag = np.diag(g)
        cfg = self.config
        self.lam = cfg.l2 if cfg.l2 is not None else cfg.l2_per_click * max(float(diag.mean()), 1.0)
        self.b, self.p = ease_weights(g, self.lam)
        log.info("EASE: %d items, lambda %.1f", g.shape[0], self.lam)

    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        return np.asarray(self.x[users] @ self.b[:, items])  # (B, I)

    def score_seeded_items(self, users: np.ndarray, seed_sets: Sequence[np.ndarray]) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        g = np.stack(
            [
                np.asarray(self.x[np.unique(np.asarray(s, dtype=np.int64))].sum(axis=0)).ravel()
                for s in seed_sets
            ],
            axis=1,
        )  # (I, S) co-clicks of each new item
        return np.asarray(self.x[users] @ (self.p @ g))  # (B, S)
