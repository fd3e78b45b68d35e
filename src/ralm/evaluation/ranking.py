"""Full-catalogue ranking of any score function, and VALID metrics for model selection.

Light on purpose (numpy, tqdm; no torch, no matplotlib): the trainers of both stages can
call :func:`valid_ranking_metrics` every epoch to early-stop and pick the best epoch on
what the evaluation reports — a full-catalogue ranking — instead of a sampled-negative
AUC::

    from ralm.evaluation.ranking import valid_task, ranking_metrics

    task = valid_task(ds, max_users=2000)      # once: VALID clicks, TRAIN seeds/exclusions
    res = ranking_metrics(task, score_fn, ks=(50,))
    res["recall@50"], res["prec@50"], res["ndcg@50"]

``score_fn(users int64 (B,), items int64 (C,)) -> float (B, C)`` (higher = better) is the
only thing a model must provide; :meth:`Recommender.score_users` is one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ralm.common.progress import progress_disabled
from ralm.data.encoded import EncodedDataset
from ralm.evaluation import metrics as M
from ralm.evaluation.protocols import EvalTask, build_task

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def top_k_items(
    score_fn: ScoreFn,
    task: EvalTask,
    k_max: int,
    seed: int = 0,
    batch_size: int = 256,
    desc: str = "rank",
) -> np.ndarray:
    """Top-``k_max`` candidate items of every test user of ``task``, int64 (U, k_max).

    The user's excluded items are never returned (slots past the number of rankable items
    hold -1). Non-finite scores (NaN, ±inf: e.g. an item a model cannot score) rank below
    every finite score of the row but are still ranked. Ties are broken by a seeded random
    order of the candidates, so constant scores give exactly a random ranking.

    Args:
        score_fn: ``(users (B,), items (C,)) -> scores (B, C)``.
        task: the evaluation task (users, candidates, exclusions).
        k_max: list length.
        seed: seeds the tie-break order.
        batch_size: users scored per call.
        desc: progress-bar label.
    """
    rng = np.random.default_rng(seed)
    cand = task.candidates[rng.permutation(task.candidates.size)]  # (C,) tie-break order
    col_of = np.full(int(cand.max()) + 1, -1, dtype=np.int64)
    col_of[cand] = np.arange(cand.size)
    k = min(k_max, cand.size)
    out = np.full((task.users.size, k_max), -1, dtype=np.int64)
    bar = tqdm(
        range(0, task.users.size, batch_size),
        desc=desc,
        disable=progress_disabled(),
        leave=False,
    )
    for a in bar:
        users = task.users[a : a + batch_size]
        s = np.array(score_fn(users, cand), dtype=np.float64)  # (B, C)
        if s.shape != (users.size, cand.size):
            raise ValueError(
                f"{desc}: scores have shape {s.shape}, expected {(users.size, cand.size)}"
            )
        bad = ~np.isfinite(s)
        if bad.any():  # below every finite score of the row, above the exclusions
            floor = np.where(bad, np.inf, s).min(axis=1, keepdims=True)  # (B, 1)
            floor = np.where(np.isfinite(floor), floor, 0.0) - 1.0
            s = np.where(bad, floor, s)
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


def ranking_metrics(
    task: EvalTask, score_fn: ScoreFn, ks: Sequence[int] = (50,), seed: int = 0
) -> dict[str, float]:
    """``prec@K`` (eq. 12), ``recall@K`` and ``ndcg@K`` of a full ranking of ``task``'s candidates.

    Args:
        task: e.g. :func:`valid_task` (or any :class:`EvalTask`).
        score_fn: ``(users (B,), items (C,)) -> scores (B, C)``.
        ks: cut-offs.
        seed: seeds the tie-break order.
    """
    topk = top_k_items(score_fn, task, max(ks), seed=seed, desc="rank (valid)")  # (U, K)
    hits = M.hit_matrix(topk, task.truth)
    n_rel = np.asarray([t.size for t in task.truth])
    out: dict[str, float] = {}
    for k in ks:
        out[f"prec@{k}"] = M.precision_at_k(hits, n_rel, k)
        out[f"recall@{k}"] = M.recall_at_k(hits, n_rel, k)
        out[f"ndcg@{k}"] = M.ndcg_at_k(hits, n_rel, k)
    return out


def valid_task(ds: EncodedDataset, max_users: int | None = None, seed: int = 0) -> EvalTask:
    """The VALID ranking task: VALID clicks, every item with TRAIN clicks ranked, the
    user's TRAIN clicks excluded (the ``valid`` protocol); ``max_users`` subsamples."""
    return build_task(ds, "valid", n_neg=1, seed=seed, max_users=max_users)


def valid_ranking_metrics(
    ds: EncodedDataset,
    score_fn: ScoreFn,
    ks: Sequence[int] = (50,),
    max_users: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """One-call form of :func:`valid_task` + :func:`ranking_metrics` (rebuilds the task)."""
    return ranking_metrics(valid_task(ds, max_users, seed), score_fn, ks, seed)
