"""RALM and RALM-average behind the :class:`Recommender` interface.

``fit`` runs the real pipeline through the stages' Python APIs: stage 1
(:func:`ralm.user.train.train_user_model`, or a given trained user model), universal
embeddings of every user (:func:`ralm.user.embed.embed_users`; histories hold TRAIN clicks
only), then stage 2 (:func:`ralm.lookalike.train.train_lookalike`, which takes seeds and
positives from TRAIN). Before each protocol, :meth:`RalmRecommender.set_seed_splits`
rebuilds the seed index from exactly the allowed splits with
:func:`ralm.lookalike.seed_index.build_seed_index`, i.e. stage 2's one builder
:func:`~ralm.lookalike.seed_index.index_items` that training and the online re-clustering
job call too, so cold items are ranked from their seeding-window clickers without any retraining.
Scores are the stage-2 raw score ``s`` (the calibrated pCTR is monotone in it).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import torch

from ralm.data.encoded import EncodedDataset, Split
from ralm.errors import CheckpointError
from ralm.evaluation.baselines.base import Recommender, item_seed_csr
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.finetune import TowerEncoder
from ralm.lookalike.item_age import item_ages
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_index import SeedIndex, build_seed_index
from ralm.user.checkpoint import UserModel
from ralm.user.config import UserModelConfig, UserTrainConfig
from ralm.user.embed import embed_users

log = logging.getLogger(__name__)


class RalmRecommender(Recommender):
    """Stage 1 + stage 2 evaluated as one recommender.

    Args:
        lookalike: stage-2 model config (variant ``ralm`` or ``average``, k, alpha, beta...);
            ``m`` is set from the user model.
        train: stage-2 loop settings (its seed is replaced by the seed given to ``fit``).
        user: stage-1 model config, used only when no ``user_model`` is given.
        user_model: an already trained stage-1 model (shared between RALM variants).
        name: label in reports.
        eval_k: clusters per item when indexing for evaluation (default: the model's k).
        lookalike_model: an already trained stage-2 model (then ``fit`` trains nothing).
        user_train: stage-1 training settings, used only when no ``user_model`` is given
            (its seed is replaced by the seed given to ``fit``).
    """

    def __init__(
        self,
        lookalike: LookalikeConfig | None = None,
        train: LookalikeTrainConfig | None = None,
        user: UserModelConfig | None = None,
        user_model: UserModel | None = None,
        name: str = "RALM",
        eval_k: int | None = None,
        lookalike_model: LookalikeModel | None = None,
        user_train: UserTrainConfig | None = None,
    ) -> None:
        super().__init__()
        self.lookalike = lookalike or LookalikeConfig()
        self.train_cfg = train or LookalikeTrainConfig()
        self.user_cfg = user or UserModelConfig()
        self.user_train_cfg = user_train or UserTrainConfig()
        self.user_model = user_model
        self.name = name
        self.eval_k = eval_k
        self.model: LookalikeModel | None = lookalike_model
        self.universal = np.zeros((0, 0), dtype=np.float32)
        self.index: SeedIndex | None = None
        # (n_items,) seconds from each item's first seed click to the seed splits' last
        # click (the audience prior's young-item rule); set with the index
        self.age = np.zeros(0, dtype=np.float64)
        self.seed = 0
        self.history: list[dict[str, float]] = []
        self.calibration: dict[str, float] = {}  # stage 2's post-hoc calibration (ECE)

    def fit(self, ds: EncodedDataset, seed: int = 0) -> None:
        from ralm.lookalike.train import train_lookalike
        from ralm.user.train import train_user_model

        self._ds = ds
        self.seed = seed
        if self.user_model is None:
            tc = self.user_train_cfg.model_copy(update={"seed": seed})
            self.user_model = train_user_model(ds, self.user_cfg, train_cfg=tc)
        um = self.user_model
        self.universal = embed_users(um, ds)  # (n_users, m)

        def target_universal(users: np.ndarray, exclude_items: np.ndarray) -> np.ndarray:
            return embed_users(um, ds, users, exclude_items)  # (B, m), target out of history

        self.seed_splits, self.index = (Split.TRAIN,), None  # indexed on first use
        if self.model is not None:  # trained elsewhere (a checkpoint)
            if self.model.config.m != self.universal.shape[1]:
                raise CheckpointError(
                    f"{self.name}: stage-2 model expects m={self.model.config.m}, the user "
                    f"model gives {self.universal.shape[1]}"
                )
            return
        cfg = self.lookalike.model_copy(update={"m": int(self.universal.shape[1])})
        # end to end: a copy of the (shared) tower is tuned, the original stays as it is
        encoder = (
            TowerEncoder(copy.deepcopy(um.tower), ds) if self.train_cfg.finetune_user else None
        )
        result = train_lookalike(
            ds,
            cfg,
            self.universal,
            target_universal,
            train_cfg=self.train_cfg.model_copy(update={"seed": seed}),
            user_encoder=encoder,
        )
        if result.universal is not None:  # the tuned tower's embeddings index the seeds
            self.universal = result.universal
        self.model = result.model
        self.history = list(result.history)
        self.calibration = dict(result.calibration)

    def variant(self, name: str, eval_k: int | None = None, **config: object) -> RalmRecommender:
        """A copy sharing the trained weights with other evaluation-time settings.

        Args:
            name: label of the copy.
            eval_k: clusters per item when indexing (re-clustering only, no retraining).
            config: LookalikeConfig fields read at scoring time (alpha, beta, use_local,
                use_global).
        """
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit() first")
        other = copy.copy(self)
        other.name = name
        other.eval_k = eval_k if eval_k is not None else self.eval_k
        other.model = copy.deepcopy(self.model)
        other.model.config = self.model.config.model_copy(update=config)
        other.index = None  # rebuilt lazily for the next protocol's seed splits
        return other

    def set_seed_splits(self, splits: tuple[Split, ...]) -> None:
        if tuple(splits) == self.seed_splits and self.index is not None:
            return  # already indexed from these splits
        super().set_seed_splits(splits)
        if self.model is None:
            return
        self.age = item_ages(self.ds, self.seed_splits)
        self.index = build_seed_index(
            self.model,
            self.universal,
            item_seed_csr(self.ds, self.seed_splits),
            k=self.eval_k,
            seed=self.seed,
            item_ids=self.ds.item_ids,
        )

    def _ensure_index(self) -> SeedIndex:
        if self.index is None:
            self.set_seed_splits(self.seed_splits)
        assert self.index is not None
        return self.index

    @torch.no_grad()
    def _user_vec(self, users: np.ndarray) -> torch.Tensor:
        assert self.model is not None
        u = torch.from_numpy(np.ascontiguousarray(self.universal[users], dtype=np.float32))
        return self.model.transform(u)  # (B, h)

    @torch.no_grad()
    def score_users(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        assert self.model is not None
        items = np.asarray(items, dtype=np.int64)
        ix = self._ensure_index()
        e_u = self._user_vec(np.asarray(users, dtype=np.int64))  # (B, h)
        s = self.model.score(
            e_u,
            torch.from_numpy(np.ascontiguousarray(ix.centroids[items])),  # (I, k, h)
            torch.from_numpy(np.ascontiguousarray(ix.mask[items])),  # (I, k)
            torch.from_numpy(np.ascontiguousarray(ix.global_vec[items])),  # (I, h)
            gram=torch.from_numpy(np.ascontiguousarray(ix.gram[items])),  # (I, k, k)
            sizes=torch.from_numpy(np.ascontiguousarray(ix.sizes[items])),  # (I, k)
            age=torch.from_numpy(self.age[items]),  # (I,)
        )  # (B, I)
        return s.numpy()

    @torch.no_grad()
    def score_seeded_items(self, users: np.ndarray, seed_sets: Sequence[np.ndarray]) -> np.ndarray:
        """Scores (B, S) of hypothetical new items known only by their seed users.

        The seed sets are indexed exactly as the online service indexes a new item: a CSR
        of the (distinct) seeds, :func:`build_seed_index` with the evaluation k and seed,
        then :meth:`LookalikeModel.score` — the same scale as :meth:`score_users`. The
        items are brand new (age 0: their clicks have just arrived).
        """
        assert self.model is not None
        sets = [np.unique(np.asarray(s, dtype=np.int64)) for s in seed_sets]
        offsets = np.r_[0, np.cumsum([s.size for s in sets])].astype(np.int64)
        rows = np.concatenate(sets) if sets else np.zeros(0, np.int64)
        ix = build_seed_index(
            self.model,
            self.universal,
            (offsets, rows),
            k=self.eval_k,
            seed=self.seed,
            item_ids=np.array([f"seeded-{j}" for j in range(len(sets))]),
        )
        t = ix.tensors()
        e_u = self._user_vec(np.asarray(users, dtype=np.int64))  # (B, h)
        s = self.model.score(
            e_u,
            t["centroids"],
            t["mask"],
            t["global_vec"],
            gram=t["gram"],
            sizes=t["sizes"],
            age=torch.zeros(len(sets), dtype=torch.float64),
        )  # (B, S)
        return s.numpy()

    @torch.no_grad()
    def score_pairs(self, users: np.ndarray, items: np.ndarray, chunk: int = 8192) -> np.ndarray:
        assert self.model is not None
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        ix = self._ensure_index()
        out = np.empty(users.size, dtype=np.float64)
        for lo in range(0, users.size, chunk):
            u, i = users[lo : lo + chunk], items[lo : lo + chunk]
            s = self.model.score_pairs(
                self._user_vec(u),  # (b, h)
                torch.from_numpy(np.ascontiguousarray(ix.centroids[i])),  # (b, k, h)
                torch.from_numpy(np.ascontiguousarray(ix.mask[i])),  # (b, k)
                torch.from_numpy(np.ascontiguousarray(ix.global_vec[i])),  # (b, h)
                sizes=torch.from_numpy(np.ascontiguousarray(ix.sizes[i])),  # (b, k)
                age=torch.from_numpy(self.age[i]),  # (b,)
            )
            out[lo : lo + u.size] = s.numpy()
        return out
