"""The paper's ablations on RALM: k, attention merge vs concat, local/global, alpha/beta.

Each ablation row is evaluated with the same protocol task and the same metrics as the
main table. Stage-1 towers are shared with the main run (see :class:`RunContext`). With
``k_retrain = false`` the k-ablation re-clusters the trained model's seeds with each k at
evaluation time (cheap); with ``retrain = false`` attention / alpha-beta variants switch the
score terms of the trained model instead of retraining stage 2 (a term switched off gives
its weight to the other, so the look-alike term keeps its scale against the audience
prior: "local" = ``(alpha + beta) cos_local``). The report says which.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from tqdm.auto import tqdm

from ralm.common.progress import progress_disabled
from ralm.evaluation.baselines.base import Recommender
from ralm.evaluation.baselines.ralm import RalmRecommender
from ralm.evaluation.baselines.youtube_dnn import TowerDotProduct
from ralm.evaluation.evaluator import evaluate
from ralm.evaluation.runner import RunContext, summarise

log = logging.getLogger(__name__)

_TERMS = {"both": (True, True), "local": (True, False), "global": (False, True)}


def _ralm(ctx: RunContext, seed: int, name: str, merge: str | None = None, **lookalike: Any):
    """A RALM trained on the shared tower of ``merge`` (default: the configured stage-1
    merge, as the main run's RALM) with stage-2 config overrides."""
    cfg = ctx.cfg
    model = RalmRecommender(
        cfg.lookalike.model_copy(update={"variant": "ralm", **lookalike}),
        cfg.lookalike_train,
        user_model=ctx.tower(merge or cfg.user.merge, seed),  # type: ignore[arg-type]
        name=name,
    )
    return ctx.fit(model, "ablation", seed)


def run_ablations(ctx: RunContext, fitted: dict[tuple[str, int], Any]) -> dict[str, Any]:
    """Run the configured ablation grid; returns ``{ablation: [{label, ..., summary}]}``."""
    ab = ctx.cfg.ablations
    assert ab is not None
    runs: dict[str, dict[str, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    params: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)

    def record(group: str, label: str, rec: Recommender, seed: int, **p: Any) -> None:
        task = ctx.task(ab.protocol, seed)
        res = evaluate(rec, task, ctx.cfg.ks, seed=seed, head_frac=ctx.cfg.long_tail_head)
        res.pop("seconds")
        runs[group][label].append({"seed": seed, **res})
        params[group][label] = p

    for seed in tqdm(ab.seeds, desc="ablations", disable=progress_disabled()):
        base = fitted.get(("ralm", seed)) or ctx.fit(ctx.make("ralm", seed), "ralm", seed)
        assert isinstance(base, RalmRecommender)
        k0 = ctx.cfg.lookalike.k
        for k in ab.k:
            if ab.k_retrain and k != k0:
                m = _ralm(ctx, seed, f"RALM k={k}", k=k)
            else:
                m = base.variant(f"RALM k={k}", eval_k=k)
            record("k", f"k={k}", m, seed, k=k)
        if ab.merge:
            configured = ctx.cfg.user.merge
            merges = ["attention", "concat"] + [configured] * (configured == "attention_concat")
            for merge in merges:
                tower = TowerDotProduct(name=f"{merge} tower", model=ctx.tower(merge, seed))  # type: ignore[arg-type]
                record(
                    "merge",
                    f"{merge}: tower (dot)",
                    ctx.fit(tower, "ablation", seed),
                    seed,
                    merge=merge,
                    part="tower",
                )
                # the main run's RALM is trained on the configured merge; the other one is
                # trained here on the other tower
                if merge == ctx.cfg.user.merge:
                    m = base
                else:
                    m = _ralm(ctx, seed, f"RALM {merge}", merge)
                record("merge", f"{merge}: RALM", m, seed, merge=merge, part="RALM")
        for which in ab.attention:
            local, glob = _TERMS[which]
            if which == "both":
                m = base
            elif ab.retrain:
                m = _ralm(ctx, seed, f"RALM {which}", use_local=local, use_global=glob)
            else:  # the kept term takes both weights: the look-alike term keeps its
                # trained scale against the audience prior (alpha + beta)
                w = ctx.cfg.lookalike.alpha + ctx.cfg.lookalike.beta
                m = base.variant(
                    f"RALM {which}", use_local=local, use_global=glob,
                    alpha=w if glob else 0.0, beta=w if local else 0.0,
                )  # fmt: skip
            record("attention", which, m, seed, use_local=local, use_global=glob)
        a0, b0 = ctx.cfg.lookalike.alpha, ctx.cfg.lookalike.beta
        for alpha, beta in ab.alpha_beta:
            if (alpha, beta) == (a0, b0):
                m = base
            elif ab.retrain:
                m = _ralm(ctx, seed, f"RALM a={alpha}", alpha=alpha, beta=beta)
            else:
                m = base.variant(f"RALM a={alpha}", alpha=alpha, beta=beta)
            record("alpha_beta", f"alpha={alpha}, beta={beta}", m, seed, alpha=alpha, beta=beta)
    out: dict[str, Any] = {
        "protocol": ab.protocol,
        "seeds": ab.seeds,
        "k_retrain": ab.k_retrain,
        "retrain": ab.retrain,
    }
    for group, by_label in runs.items():
        out[group] = [
            {"label": label, **params[group][label], "summary": summarise(r), "runs": r}
            for label, r in by_label.items()
        ]
    return out
