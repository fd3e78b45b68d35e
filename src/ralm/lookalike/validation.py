"""Stage-2 ranking validation: recall@K of VALID clicks over every item with seeds.

Used when ``LookalikeTrainConfig.monitor == "recall"`` (model selection on a
full-catalogue ranking, the way results are reported) instead of the AUC against sampled
negatives. A validation user is scored against every item that has TRAIN seeds with the
one scorer (``LookalikeModel.score`` over the epoch's seed index); the user's TRAIN clicks
are not ranked; the targets are the user's VALID clicks on items with seeds that are not
TRAIN clicks. The metric is :func:`ralm.evaluation.metrics.recall_at_k`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ralm.data.encoded import EncodedDataset, Split
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import SeedSets, click_keys
from ralm.lookalike.seed_index import SeedIndex
from ralm.training import ranking


@dataclass
class RankingSet:
    """Fixed ranking-validation material, built once before training.

    Attributes:
        users: int64 (V,) evaluated users.
        targets: CSR (offsets (V+1,), items) VALID clicks to find.
        seen: CSR (offsets (V+1,), items) TRAIN clicks (never ranked).
        excluded: bool (n_items,) items without seeds (not candidates).
    """

    users: np.ndarray
    targets: tuple[np.ndarray, np.ndarray]
    seen: tuple[np.ndarray, np.ndarray]
    excluded: np.ndarray


def _csr_of(keys: np.ndarray, users: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR over ``users`` (sorted) of the sorted ``user * n_items + item`` keys."""
    u, i = keys // n_items, keys % n_items
    keep = np.isin(u, users)
    u, i = u[keep], i[keep]
    counts = np.bincount(np.searchsorted(users, u), minlength=users.size)
    return np.r_[0, np.cumsum(counts)].astype(np.int64), i.astype(np.int64)


def build_ranking_set(
    ds: EncodedDataset, seeds: SeedSets, max_users: int, seed: int
) -> RankingSet | None:
    """Ranking validation of ``ds`` (None when no VALID click is on an item with seeds)."""
    n = ds.n_items
    train = click_keys(ds, (Split.TRAIN,))
    valid = click_keys(ds, (Split.VALID,))
    valid = valid[seeds.counts[valid % n] > 0]
    valid = valid[~np.isin(valid, train)]
    if valid.size == 0:
        return None
    users = np.unique(valid // n)
    if users.size > max_users:
        rng = np.random.default_rng([seed, 7_919])
        users = np.sort(rng.choice(users, max_users, replace=False))
    return RankingSet(
        users=users.astype(np.int64),
        targets=_csr_of(valid, users, n),
        seen=_csr_of(train, users, n),
        excluded=seeds.counts == 0,
    )


@torch.no_grad()
def ranking_recall(
    model: LookalikeModel,
    index: SeedIndex,
    seed_universal: np.ndarray,
    rs: RankingSet,
    k: int,
    batch_size: int = 256,
) -> float:
    """recall@k of ``rs`` when ranking every item with seeds by the model's score.

    Args:
        model: the look-alike model (eval mode).
        index: seed index of the current clusters (the items' representations).
        seed_universal: float32 (n_users, m) universal embeddings (VALID clicks are not in
            the TRAIN history, so no exclusion is needed).
        rs: the ranking set.
        k: cut-off.
        batch_size: users scored at once.
    """
    t = index.tensors()

    def score(users: np.ndarray) -> torch.Tensor:
        e_u = model.transform(torch.from_numpy(seed_universal[users]))  # (b, h)
        return model.score(
            e_u, t["centroids"], t["mask"], t["global_vec"], gram=t["gram"], sizes=t["sizes"]
        )  # (b, I)

    return ranking.recall_at_k(score, rs.users, rs.targets, rs.seen, k, batch_size, rs.excluded)
