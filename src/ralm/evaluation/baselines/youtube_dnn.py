"""YouTube DNN (Covington et al. 2016): the user tower scored by a dot product with item
embeddings, trained with sampled softmax.

The architecture is stage 1's user tower with ``merge="concat"``: every field embedded
(univalent lookups, multivalent bags averaged, the watched-item history being one of them,
continuous features through one FC), concatenated, an MLP, and a dot product with a learned
item-ID table, trained with the log-uniform sampled softmax of :mod:`ralm.user.sampler` /
:mod:`ralm.user.sampled_softmax`. It is trained through
:func:`ralm.user.train.train_user_model`, so the loss, sampler, leakage guard and early
stopping are the ones stage 1 uses; there is no second copy.

Items without TRAIN clicks have an untrained embedding row and get the :class:`ItemFallback`
score instead (labelled in the report).
"""

from __future__ import annotations

import logging

import numpy as np

from ralm.data.encoded import EncodedDataset
from ralm.evaluation.baselines.base import FallbackKind, IdBasedRecommender, ItemFallback
from ralm.user.checkpoint import UserModel
from ralm.user.config import UserModelConfig, UserTrainConfig
from ralm.user.embed import embed_users

log = logging.getLogger(__name__)


class TowerDotProduct(IdBasedRecommender):
    """A stage-1 user model used directly as a recommender: score = user · item embedding.

    Args:
        config: stage-1 model configuration (the merge decides YouTube DNN vs. the RALM
            tower).
        fallback: score rule for items without TRAIN clicks.
        name: label in reports.
        model: an already trained stage-1 model to reuse instead of training in :meth:`fit`.
        train: stage-1 training settings (its seed is replaced by the seed given to ``fit``).
    """

    def __init__(
        self,
        config: UserModelConfig | None = None,
        fallback: FallbackKind = "popularity",
        name: str = "YouTube DNN",
        model: UserModel | None = None,
        train: UserTrainConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config or UserModelConfig(merge="concat")
        self.train_cfg = train or UserTrainConfig()
        self.name = name
        self.fallback_kind: FallbackKind = fallback
        self.model = model
        self.user_vec = np.zeros((0, 0), dtype=np.float32)
        self.item_vec = np.zeros((0, 0), dtype=np.float32)

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        from ralm.user.train import train_user_model

        self._ds = ds
        if self.model is None:
            tc = self.train_cfg.model_copy(update={"seed": seed})
            self.model = train_user_model(ds, self.config, train_cfg=tc)
        self.fallback = ItemFallback(ds, self.fallback_kind, seed)
        self.user_vec = embed_users(self.model, ds)  # (n_users, d)
        self.item_vec = self.model.item_embedding.detach().float().numpy()  # (n_items, d)

    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        assert self.fallback is not None
        u = self.user_vec[np.asarray(users, dtype=np.int64)]  # (B, d)
        v = self.item_vec[np.asarray(items, dtype=np.int64)]  # (I, d)
        return self.fallback.apply(u @ v.T, np.asarray(items))  # (B, I)
