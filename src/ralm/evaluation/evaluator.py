"""Run one :class:`Recommender` through one :class:`EvalTask` and compute every metric."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from ralm.evaluation import metrics as M
from ralm.evaluation.baselines.base import Recommender
from ralm.evaluation.protocols import EvalTask
from ralm.evaluation.ranking import top_k_items

log = logging.getLogger(__name__)

COPY_TOP = 50  # the copy test's "reached the top-K" cut-off


def rank_top_k(
    model: Recommender, task: EvalTask, k_max: int, seed: int = 0, batch_size: int = 256
) -> np.ndarray:
    """Top-``k_max`` candidate items of every test user, int64 (U, k_max), best first.

    The user's excluded items are never returned (slots past the number of rankable items
    hold -1). Ties are broken by a seeded random order of the candidates, so a model with
    constant scores is exactly a random ranking (see :func:`ralm.evaluation.ranking.top_k_items`).
    """
    return top_k_items(
        model.score_users,
        task,
        k_max,
        seed=seed,
        batch_size=batch_size,
        desc=f"rank {model.name} ({task.protocol})",
    )


def _finite(s: np.ndarray) -> np.ndarray:
    """Non-finite scores moved just below the row's finite minimum (as in the ranking)."""
    bad = ~np.isfinite(s)
    if not bad.any():
        return s
    floor = np.where(bad, np.inf, s).min(axis=1, keepdims=True)
    return np.where(bad, np.where(np.isfinite(floor), floor, 0.0) - 1.0, s)


def _mid_rank(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1-based rank of ``target (B,)`` among the rows of ``scores (B, C)``; ties share half."""
    above = (scores > target[:, None]).sum(axis=1)
    tied = (scores == target[:, None]).sum(axis=1)
    return 1.0 + above + tied / 2.0


def copy_test(model: Recommender, task: EvalTask, top: int = COPY_TOP) -> dict[str, float]:
    """The copy test (see :func:`ralm.evaluation.protocols.build_copy_task`).

    For each copied item, its TEST clickers rank (1) the original among the warm
    candidates and (2) the copy — scored by :meth:`Recommender.score_seeded_items` from its
    seeds only — among the same candidates (the original included); the user's TRAIN
    clicks are excluded. Per item the median rank over its clickers is taken.

    Returns:
        ``orig_rank`` / ``copy_rank``: median over items of the per-item median rank (and
        ``_min`` / ``_max``), ``orig_top50`` / ``copy_top50``: mean share of an item's
        clickers with the item in their top ``top``, ``copy_vs_orig``: copy_rank /
        orig_rank, ``n_candidates``. Models without ``score_seeded_items`` get the
        original's figures only.
    """
    assert task.copy_items is not None and task.copy_seeds is not None
    assert task.copy_users is not None
    col_of = {int(j): c for c, j in enumerate(task.candidates)}
    med_o, med_c, top_o, top_c = [], [], [], []
    for j, seeds, users in zip(task.copy_items, task.copy_seeds, task.copy_users, strict=True):
        s = _finite(np.array(model.score_users(users, task.candidates), dtype=np.float64))
        rows = np.searchsorted(task.users, users)  # (B,) rows of the task's CSR
        for r, row in enumerate(rows):
            own = task.exclude_items[task.exclude_offsets[row] : task.exclude_offsets[row + 1]]
            s[r, [col_of[int(i)] for i in own if int(i) in col_of]] = -np.inf
        rank_o = _mid_rank(s, s[:, col_of[int(j)]].copy()) - 0.5  # the original ties itself
        med_o.append(float(np.median(rank_o)))
        top_o.append(float(np.mean(rank_o <= top)))
        if model.supports_seeded_items:
            c = np.asarray(model.score_seeded_items(users, [seeds]), dtype=np.float64)[:, 0]
            c = np.where(np.isfinite(c), c, -np.inf)
            rank_c = _mid_rank(s, c)
            med_c.append(float(np.median(rank_c)))
            top_c.append(float(np.mean(rank_c <= top)))
    out = {
        "orig_rank": float(np.median(med_o)),
        "orig_rank_min": min(med_o),
        "orig_rank_max": max(med_o),
        f"orig_top{top}": float(np.mean(top_o)),
    }
    if med_c:
        out |= {
            "copy_rank": float(np.median(med_c)),
            "copy_rank_min": min(med_c),
            "copy_rank_max": max(med_c),
            f"copy_top{top}": float(np.mean(top_c)),
            "copy_vs_orig": float(np.median(med_c) / np.median(med_o)),
        }
    out["n_candidates"] = float(task.candidates.size)
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
    ``tail@K`` for every K (the experiment's and the protocol's ``extra_ks``), ``cold_share@K``
    when the task has focus items (``mixed``), plus ``auc``, ``gauc``, ``n_users`` and
    ``seconds``. The ``copy`` task returns the figures of :func:`copy_test` instead.
    """
    t0 = time.perf_counter()
    model.set_seed_splits(task.seed_splits)
    if task.protocol == "copy":
        diag = copy_test(model, task)
        diag["n_users"] = float(task.users.size)
        diag["seconds"] = time.perf_counter() - t0
        log.info("%s / copy: orig %.0f", model.name, diag["orig_rank"])
        return diag
    ks = sorted(set(ks) | set(task.extra_ks))
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
        if task.focus_items is not None:
            res[f"cold_share@{k}"] = M.slot_share(top, task.focus_items)
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
