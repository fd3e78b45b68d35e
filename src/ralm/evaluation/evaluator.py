"""Run one :class:`Recommender` through one :class:`EvalTask` and compute every metric."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from ralm.common.progress import progress_disabled
from ralm.evaluation import metrics as M
from ralm.evaluation.baselines.base import Recommender
from ralm.evaluation.protocols import EvalTask

log = logging.getLogger(__name__)


def rank_top_k(
    model: Recommender, task: EvalTask, k_max: int, seed: int = 0, batch_size: int = 256
) -> np.ndarray:
    """Top-``k_max`` candidate items of every test user, int64 (U, k_max), best first.

    The user's excluded items are never returned (slots past the number of rankable items
    hold -1). Ties are broken by a seeded random order of the candidates, so a model with
    constant scores is exactly a random ranking.
    """
    rng = np.random.default_rng(seed)
    cand = task.candidates[rng.permutation(task.candidates.size)]  # (C,) tie-break order
    col_of = np.full(int(cand.max()) + 1, -1, dtype=np.int64)
    col_of[cand] = np.arange(cand.size)
    k = min(k_max, cand.size)
    out = np.full((task.users.size, k_max), -1, dtype=np.int64)
    bar = tqdm(
        range(0, task.users.size, batch_size),
        desc=f"rank {model.name} ({task.protocol})",
        disable=progress_disabled(),
        leave=False,
    )
    for a in bar:
        users = task.users[a : a + batch_size]
        s = np.asarray(model.score_users(users, cand), dtype=np.float64)  # (B, C)
        if s.shape != (users.size, cand.size):
            raise ValueError(
                f"{model.name}.score_users returned {s.shape}, expected {(users.size, cand.size)}"
            )
        s = np.where(np.isnan(s), -np.inf, s)
        lo, hi = task.exclude_offsets[a], task.exclude_offsets[a + users.size]
        lengths = np.diff(task.exclude_offsets[a : a + users.size + 1])
        rows = np.repeat(np.arange(users.size), lengths)
        cols = col_of[task.exclude_items[lo:hi]]
        s[rows[cols >= 0], cols[cols >= 0]] = -np.inf  # the user's own clicks are not candidates
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (B, k)
        top = cand[order]
        top[np.take_along_axis(s, order, axis=1) == -np.inf] = -1
        out[a : a + users.size, :k] = top
    return out


def evaluate(
    model: Recommender,
    task: EvalTask,
    ks: Sequence[int] = (10, 50),
    seed: int = 0,
    head_frac: float = 0.2,
) -> dict[str, float]:
    """All metrics of ``model`` on ``task``.

    Returns a flat dict: ``prec@K``, ``recall@K``, ``ndcg@K``, ``coverage@K``, ``gini@K``,
    ``tail@K`` for every K, plus ``auc``, ``gauc``, ``n_users`` and ``seconds``.
    """
    t0 = time.perf_counter()
    model.set_seed_splits(task.seed_splits)
    k_max = max(ks)
    topk = rank_top_k(model, task, k_max, seed=seed)  # (U, k_max)
    hits = M.hit_matrix(topk, task.truth)  # (U, k_max)
    n_rel = np.asarray([t.size for t in task.truth])  # (U,)
    tail = M.long_tail_items(task.seed_popularity, task.candidates, head_frac)
    res: dict[str, float] = {}
    for k in ks:
        res[f"prec@{k}"] = M.precision_at_k(hits, n_rel, k)
        res[f"recall@{k}"] = M.recall_at_k(hits, n_rel, k)
        res[f"ndcg@{k}"] = M.ndcg_at_k(hits, n_rel, k)
        top = topk[:, :k]
        res[f"coverage@{k}"] = M.coverage_at_k(top[top >= 0], task.candidates)
        res[f"gini@{k}"] = M.gini(M.exposure_counts(top, tail.size)[task.candidates])
        res[f"tail@{k}"] = M.long_tail_share(top, tail)
    scores = model.score_pairs(task.pair_users, task.pair_items)  # (n,)
    res["auc"] = M.auc(task.pair_labels, scores)
    res["gauc"] = M.gauc(task.pair_users, task.pair_labels, scores)
    res["n_users"] = float(task.users.size)
    res["seconds"] = time.perf_counter() - t0
    log.info(
        "%s / %s: prec@%d=%.4f auc=%.4f (%.1fs)",
        model.name,
        task.protocol,
        ks[0],
        res[f"prec@{ks[0]}"],
        res["auc"],
        res["seconds"],
    )
    return res
