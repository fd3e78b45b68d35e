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

(~5-10 min per stage-2 variant on one loaded core.) One JSON line per (variant, scoring).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import torch

from ralm.data.encoded import EncodedDataset
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
    "k5": {"eval_k": 5},
}


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
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    scorings = list(SCORINGS) if args.scoring == "all" else args.scoring.split(",")
    ds = EncodedDataset.load(args.data)
    tv = training_view(ds)
    utc = UserTrainConfig(epochs=5, patience=2, seed=args.seed)
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
            co, mx = evaluate(m, tasks["cold"], seed=args.seed), evaluate(m, tasks["mixed"])
            out = {
                "variant": name,
                "scoring": sc,
                "warm_prec@10": w["prec@10"],
                "warm_auc": w["auc"],
                "warm_tail@50": w["tail@50"],
                "cold_prec@10": co["prec@10"],
                "mixed_recall@50": mx["recall@50"],
                "mixed_cold_share@50": mx["cold_share@50"],
                **{k: c.get(k) for k in ("orig_rank", "copy_rank", "copy_vs_orig")},
                "history": rec.history,
                "calibration": rec.calibration,
                "gamma": rec.model.gamma.item(),
                "inv_temperature": rec.model.inv_temperature.item(),
                "fit_s": fit_s,
            }
            print(json.dumps(out, default=float), flush=True)


if __name__ == "__main__":
    main()
