"""The copy test through the running service (issue 13), on a trained run.

Not a test. For the ``--items`` most clicked TRAIN items, a brand-new item is clicked by 40
random TRAIN clickers of the item (``POST /clicks``' path, ``RalmService.add_clicks``), one
full re-cluster cycle runs, and the new item's rank (and the original's) is read from
``recommend`` (up to 1,000 items, ranks past it count as 1,001) for the item's TEST
clickers who did not click it in TRAIN, and for 50 users who never clicked it. Prints one
row per item and the medians over items. ``--young-boost 1`` switches the audience prior's
young-item rule off (the model as trained otherwise).

    ralm train user --data data/ml-100k --out runs/ml/user --epochs 5
    ralm train lookalike --data data/ml-100k --user-model runs/ml/user \
        --out runs/ml/lookalike --epochs 1
    python benchmarks/service_copy_test.py --run runs/ml --data data/ml-100k --state /tmp/copy10
    python benchmarks/service_copy_test.py --run runs/ml --data data/ml-100k --state /tmp/copy1 \
        --young-boost 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ralm.data.encoded import EncodedDataset, Split
from ralm.serve.config import ServeConfig
from ralm.serve.loader import load_serving_model
from ralm.serve.service import RalmService
from ralm.serve.store import Click

N_SEEDS, N_UNRELATED, MAX_N = 40, 50, 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="folder with user/ and lookalike/")
    p.add_argument("--data", type=Path, required=True, help="the encoded dataset")
    p.add_argument("--state", type=Path, required=True, help="a fresh service state folder")
    p.add_argument("--items", type=int, default=5, help="most clicked items copied")
    p.add_argument("--young-boost", type=float, default=None, help="override (1 = rule off)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    ds = EncodedDataset.load(args.data)
    it = ds.interactions
    item, user = np.asarray(it.item), np.asarray(it.user)
    tr, te = it.click_mask(Split.TRAIN), it.click_mask(Split.TEST)
    pop = np.bincount(item[tr], minlength=ds.n_items)
    rng = np.random.default_rng(args.seed)
    model = load_serving_model(args.run, args.data)
    cfg = model.scorer.config
    if args.young_boost is not None:
        cfg = cfg.model_copy(update={"young_boost": args.young_boost})
        model.scorer.config = cfg
    print(f"young_age {cfg.young_age / 86400:.1f} days, young_boost {cfg.young_boost:g}")
    svc = RalmService(
        model,
        ServeConfig(state_dir=args.state, recluster_every_s=3600, min_seeds=5, fast_path=False),
    )
    svc.start()

    def ranks(users: np.ndarray, item_id: str) -> np.ndarray:
        out = []
        for u in users:
            got = [r.item_id for r in svc.recommend(user_id=str(ds.user_ids[u]), n=MAX_N).items]
            out.append(got.index(item_id) + 1 if item_id in got else MAX_N + 1)
        return np.asarray(out)

    rows = []
    try:
        for movie in np.argsort(-pop, kind="stable")[: args.items]:
            clickers = np.unique(user[tr & (item == movie)])
            seeds = rng.choice(clickers, N_SEEDS, replace=False)
            tested = np.setdiff1d(np.unique(user[te & (item == movie)]), clickers)
            never = np.setdiff1d(np.arange(ds.n_users), np.unique(user[item == movie]))
            never = rng.choice(never, min(N_UNRELATED, never.size), replace=False)
            new_id = f"copy-of-{ds.item_ids[movie]}"
            now = time.time()
            svc.add_clicks([Click(str(ds.user_ids[u]), new_id, now) for u in seeds])
            svc.reclusterer.run_full()
            rc, ro, rn = (
                ranks(tested, new_id),
                ranks(tested, str(ds.item_ids[movie])),
                ranks(never, new_id),
            )
            row = {
                "item": str(ds.item_ids[movie]),
                "test_clickers": int(tested.size),
                "orig_rank": float(np.median(ro)),
                "copy_rank": float(np.median(rc)),
                "copy_top50": float(np.mean(rc <= 50)),
                "unrelated_copy_rank": float(np.median(rn)),
                "unrelated_copy_top50": float(np.mean(rn <= 50)),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        svc.close()
    keys = [k for k in rows[0] if k not in ("item", "test_clickers")]
    print(
        "median over items:", json.dumps({k: float(np.median([r[k] for r in rows])) for k in keys})
    )


if __name__ == "__main__":
    main()
