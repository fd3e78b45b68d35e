"""Stage-2 quality variants (issue 13): warm, mixed and copy-test figures of RALM variants.

One stage-1 tower (5 epochs, the quick preset's) is trained on the training view of a
prepared dataset and shared; each variant trains stage 2 with its own settings and is
evaluated by the evaluator's ``warm``, ``cold``, ``mixed`` and ``copy`` protocols, as
trained and with scoring-time changes (``prior_scale``, ``seed_prior`` off, eval k). The
figures of docs/EVALUATION.md ("Issue 13") come from::

    ralm data fetch movielens-100k && ralm data prepare movielens-100k --out data/ml-100k
    python benchmarks/bench_stage2_quality.py --data data/ml-100k \
        --variant bce='{"loss": "bce", "neg_sampling": "uniform", "epochs": 1, "patience": 0}' \
        --variant sm_unif='{"neg_sampling": "uniform", "epochs": 1, "patience": 0}' \
        --variant sm_logu='{"epochs": 1, "patience": 0}'
    python benchmarks/bench_stage2_quality.py --data data/ml-100k \
        --variant sm2='{"epochs": 2, "patience": 1}' --scoring all

The figures of its "Issue 13, continued" section (end-to-end stage 1, learned alpha/beta,
the capped prior, the diagnostics) come from::

    B="python benchmarks/bench_stage2_quality.py --scoring as_trained,prior_off,cap50"
    $B --data data/ml-100k --variant base='{"epochs": 1, "patience": 0}' \
        --variant lw='{"epochs": 1, "patience": 0, "model": {"learn_weights": true}}'
    $B --data data/ml-100k --variant ft01='{"epochs": 1, "patience": 0, "finetune_user": true}' \
        --variant ft1='{"epochs": 1, "patience": 0, "finetune_user": true, "finetune_lr_mult": 1}'
    # the planted toy data (ralm.data.toy) and a small wechat synthetic set
    python -c "from ralm.data.toy import make_toy_dataset as t; t(n_users=1500, n_items=150, \
        clicks_per_user=20, n_cold_items=15, seed=3).save('data/toy')"
    ralm data synth --preset wechat --users 3000 --items 600 --clicks 90000 --format encoded \
        --out data/wechat-s

(~5-10 min per stage-2 variant on one idle core, ~20 on a loaded one.) One JSON line per
(variant, scoring); the ``as_trained`` line adds the geometry diagnostics
(:func:`diagnostics`) and the copy items' clickers-vs-others AUC (:func:`column_auc`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np
import torch

from ralm.data.encoded import EncodedDataset, Split
from ralm.evaluation.baselines.ralm import RalmRecommender
from ralm.evaluation.evaluator import evaluate
from ralm.evaluation.protocols import build_task, training_view
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.user.config import UserModelConfig, UserTrainConfig
from ralm.user.train import train_user_model

SCORINGS: dict[str, dict[str, Any]] = {
    "as_trained": {},
    "prior_off": {"seed_prior": False},
    "prior0.5": {"prior_scale": 0.5},
    "prior0.25": {"prior_scale": 0.25},
    "cap20": {"prior_cap": 20.0},
    "cap50": {"prior_cap": 50.0},
    "cap100": {"prior_cap": 100.0},
    "shrink": {"prior": "shrink"},
    "k1": {"eval_k": 1},
    "k2": {"eval_k": 2},
    "k5": {"eval_k": 5},
}


@torch.no_grad()
def diagnostics(rec: RalmRecommender, ds: EncodedDataset) -> dict[str, float]:
    """Why the look-alike term does (not) separate audiences: the geometry of the
    transformed space (issue 13, docs/EVALUATION.md).

    ``pair_cos``: mean cosine between random users' transformed embeddings (anisotropy;
    0 = isotropic); ``mean_share``: ``|mean|^2 / mean |e|^2`` (share of the common
    direction); ``dead``: share of zero (ReLU) entries; ``item_cos``: mean cosine between
    items' global vectors; ``local_vs_global``: mean cos(E_local, E_global) over a sample
    of (user, item) pairs (1 = the local attention adds nothing over the global vector);
    ``col_auc``: over the copy items, AUC of the no-prior score separating each item's
    TEST clickers from every other non-seed user (0.5 = no separation).
    """
    from ralm.lookalike.attention import masked_softmax

    model = rec.model
    assert model is not None
    rng = np.random.default_rng(0)
    users = rng.choice(ds.n_users, min(400, ds.n_users), replace=False)
    e = model.transform(torch.from_numpy(np.ascontiguousarray(rec.universal)))  # (U, h)
    z = torch.nn.functional.normalize(e[users], dim=1)
    c = z @ z.T
    iu = torch.triu_indices(len(users), len(users), 1)
    ix = rec._ensure_index()
    t = ix.tensors()
    have = torch.from_numpy(np.flatnonzero(ix.sizes.sum(1) > 0))
    g = torch.nn.functional.normalize(t["global_vec"][have], dim=1)
    gi = rng.choice(have.numel(), min(600, have.numel()), replace=False)
    gc = g[gi] @ g[gi].T
    giu = torch.triu_indices(gi.size, gi.size, 1)
    pu = torch.from_numpy(rng.choice(ds.n_users, 2000))
    pi = have[torch.from_numpy(rng.choice(have.numel(), 2000))]
    cen, msk = t["centroids"][pi], t["mask"][pi]
    logits = torch.einsum("bh,hg,bkg->bk", e[pu], model.local_attention.weight, cen)
    lp = model.log_prior(t["sizes"][pi])
    w = masked_softmax(torch.tanh(logits), msk, lp)
    el = torch.einsum("bk,bkh->bh", w, cen)
    lvg = torch.nn.functional.cosine_similarity(el, t["global_vec"][pi], dim=1)
    return {
        "pair_cos": float(c[iu[0], iu[1]].mean()),
        "mean_share": float(e.mean(0).square().sum() / e.square().sum(1).mean()),
        "dead": float((e <= 0).float().mean()),
        "item_cos": float(gc[giu[0], giu[1]].mean()),
        "local_vs_global": float(lvg.mean()),
    }


def column_auc(model: RalmRecommender, task: Any, ds: EncodedDataset) -> float:
    """Mean over the copy items of the AUC separating the item's TEST clickers from all
    other users who are not its seeds, on the item's score column."""
    from ralm.evaluation.metrics import auc

    out = []
    allu = np.arange(ds.n_users)
    for j, users in zip(task.copy_items, task.copy_users, strict=True):
        s = model.score_users(allu, np.array([j]))[:, 0]  # (U,)
        y = np.zeros(ds.n_users)
        y[users] = 1
        seeds = np.asarray(ds.interactions.user)[
            (np.asarray(ds.interactions.item) == j)
            & (np.asarray(ds.interactions.split) == int(Split.TRAIN))
        ]
        keep = ~np.isin(allu, seeds) | (y > 0)
        out.append(auc(y[keep], s[keep]))
    return float(np.mean(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset folder")
    ap.add_argument(
        "--variant",
        action="append",
        required=True,
        help="NAME=JSON of LookalikeTrainConfig fields (may add a 'model' dict of "
        "LookalikeConfig fields)",
    )
    ap.add_argument("--scoring", default="as_trained,prior_off", help="'all' or a list")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage1-epochs", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    scorings = list(SCORINGS) if args.scoring == "all" else args.scoring.split(",")
    ds = EncodedDataset.load(args.data)
    tv = training_view(ds)
    utc = UserTrainConfig(epochs=args.stage1_epochs, patience=2, seed=args.seed)
    um = train_user_model(tv, UserModelConfig(), train_cfg=utc)
    tasks = {p: build_task(ds, p, seed=args.seed) for p in ("warm", "cold", "mixed", "copy")}
    for spec in args.variant:
        name, _, raw = spec.partition("=")
        train = json.loads(raw)
        model_cfg = LookalikeConfig(**train.pop("model", {}))
        t0 = time.perf_counter()
        rec = RalmRecommender(
            lookalike=model_cfg, train=LookalikeTrainConfig(**train), user_model=um, name=name
        )
        rec.fit(tv, seed=args.seed)
        assert rec.model is not None
        fit_s = time.perf_counter() - t0
        for sc in scorings:
            opts = dict(SCORINGS[sc])
            eval_k = opts.pop("eval_k", None)
            m = rec.variant(f"{name}/{sc}", eval_k=eval_k, **opts)
            w, c = evaluate(m, tasks["warm"], seed=args.seed), evaluate(m, tasks["copy"])
            extra: dict[str, Any] = {}
            if sc in ("as_trained", "prior_off"):
                extra["col_auc" if sc == "as_trained" else "col_auc_prior_off"] = column_auc(
                    m, tasks["copy"], ds
                )
            if sc == "as_trained":
                extra.update(diagnostics(m, tv))
            co, mx = evaluate(m, tasks["cold"], seed=args.seed), evaluate(m, tasks["mixed"])
            out = {
                "variant": name,
                "scoring": sc,
                "warm_prec@10": w["prec@10"],
                "warm_auc": w["auc"],
                "warm_gauc": w["gauc"],
                "warm_tail@50": w["tail@50"],
                "cold_prec@10": co["prec@10"],
                "mixed_recall@50": mx["recall@50"],
                "mixed_cold_share@50": mx["cold_share@50"],
                **{k: c.get(k) for k in ("orig_rank", "copy_rank", "copy_vs_orig")},
                "history": rec.history,
                "calibration": rec.calibration,
                **extra,
                "gamma": rec.model.gamma.item(),
                "alpha_beta": rec.model.alpha_beta,
                "inv_temperature": rec.model.inv_temperature.item(),
                "fit_s": fit_s,
            }
            print(json.dumps(out, default=float), flush=True)


if __name__ == "__main__":
    main()
