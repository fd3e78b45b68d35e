"""The VALID ranking metrics the trainers call for model selection."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ralm.data.encoded import Split
from ralm.evaluation.baselines import Popularity
from ralm.evaluation.evaluator import evaluate
from ralm.evaluation.protocols import build_task, training_view
from ralm.evaluation.ranking import ranking_metrics, top_k_items, valid_ranking_metrics, valid_task


def test_oracle_scores_are_perfect_and_exclusions_hold(toy):
    task = valid_task(toy)
    it = toy.interactions
    m = it.mask(Split.VALID) & (it.label > 0)
    valid = set(zip(it.user[m].tolist(), it.item[m].tolist(), strict=True))
    m = it.mask(Split.TRAIN) & (it.label > 0)
    train = set(zip(it.user[m].tolist(), it.item[m].tolist(), strict=True))

    def oracle(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.array([[(u, i) in valid for i in items.tolist()] for u in users.tolist()], float)

    def anti(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        # prefers the user's own TRAIN clicks, which must never be ranked
        return np.array([[(u, i) in train for i in items.tolist()] for u in users.tolist()], float)

    res = ranking_metrics(task, oracle, ks=(5, 50))
    assert res["prec@5"] == pytest.approx(1.0) and res["ndcg@50"] == pytest.approx(1.0)
    assert res["recall@50"] == pytest.approx(1.0)
    top = top_k_items(anti, task, 5)
    assert not any((int(u), int(i)) in train for u, row in zip(task.users, top, strict=True)
                   for i in row)  # fmt: skip
    assert ranking_metrics(task, anti, ks=(5,))["recall@5"] < 0.5


def test_same_numbers_as_the_evaluator(toy):
    pop = Popularity()
    pop.fit(training_view(toy))
    want = evaluate(pop, build_task(toy, "valid", seed=0), ks=(10, 50), seed=0)
    got = valid_ranking_metrics(toy, pop.score_users, ks=(10, 50), seed=0)
    for key in ("prec@10", "recall@50", "ndcg@50"):
        assert got[key] == pytest.approx(want[key])
    sub = valid_task(toy, max_users=20, seed=1)
    assert sub.users.size == 20


def test_ranking_module_imports_no_torch():
    code = (
        "import sys, ralm.evaluation.ranking; "
        "sys.exit(int(any(m in sys.modules for m in ('torch', 'matplotlib'))))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
