"""Shared state of one experiment run: dataset, tasks, trained towers, timings.

Stage-1 towers are expensive and shared: RALM, RALM-average, the RALM-tower baseline and the
ablations use the tower of the configured merge (``[user] merge``) of a seed; YouTube DNN
uses the concat tower, and the merge ablation both.
Each is trained once per seed, on the training view (no TEST/COLD_TEST rows).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ralm.data.encoded import EncodedDataset, Split
from ralm.evaluation.baselines.base import RandomRecommender, Recommender
from ralm.evaluation.baselines.ease import EASE
from ralm.evaluation.baselines.lr import LogisticRegression
from ralm.evaluation.baselines.neighbours import ItemKNN, UserKNN
from ralm.evaluation.baselines.popularity import Popularity
from ralm.evaluation.baselines.ralm import RalmRecommender
from ralm.evaluation.baselines.yahoo import YahooLookalike
from ralm.evaluation.baselines.youtube_dnn import TowerDotProduct
from ralm.evaluation.config import DataConfig, ExperimentConfig, ProtocolName
from ralm.evaluation.protocols import EvalTask, build_task, training_view
from ralm.user.checkpoint import UserModel

log = logging.getLogger(__name__)

DISPLAY = {
    "random": "Random",
    "popularity": "Popularity",
    "lr": "LR",
    "yahoo": "Yahoo look-alike",
    "youtube_dnn": "YouTube DNN",
    "ralm_tower": "RALM stage-1 tower (dot)",
    "ralm_average": "RALM-average",
    "ralm_paper": "RALM (paper score, no audience prior)",
    "ralm": "RALM",
    "item_knn": "item-kNN",
    "user_knn": "user-kNN look-alike",
    "ease": "EASE",
}


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per metric: mean, sample std (ddof=1; 0 for one run) and the values of ``runs``.

    Shared by the main tables (``experiment``) and the ablation grid (``ablations``).
    """
    out: dict[str, dict[str, Any]] = {}
    for key in runs[0]:
        if key == "seed":
            continue
        vals = np.asarray([r[key] for r in runs], dtype=np.float64)
        std = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        out[key] = {"mean": float(vals.mean()), "std": std, "values": vals.tolist()}
    return out


def load_dataset(data: DataConfig) -> EncodedDataset:
    """The encoded dataset of an experiment (prepared by the data layer, or the toy set)."""
    if data.encoded is not None:
        return EncodedDataset.load(data.encoded)
    if data.source == "toy":
        from ralm.data.toy import make_toy_dataset

        return make_toy_dataset(seed=data.split.seed)
    if data.dir is not None and data.reuse and (data.dir / "meta.json").is_file():
        ds = EncodedDataset.load(data.dir)
        saved = ds.extra.get("split") or {}
        same_split = all(saved.get(k) == v for k, v in data.split.model_dump().items())
        if same_split and ds.extra.get("source") == data.source:
            log.info("reusing encoded dataset %s", data.dir)
            return ds
        log.info("%s holds another source or split; preparing it again", data.dir)
    from ralm.data.prepare import prepare

    return prepare(data.source, data.dir, data.split)


def split_counts(ds: EncodedDataset) -> dict[str, int]:
    """Number of interaction rows per split."""
    it = ds.interactions
    return {s.name: int(it.mask(s).sum()) for s in Split}


@dataclass
class RunContext:
    """Everything one experiment run shares between models, seeds and ablations.

    Args:
        cfg: the experiment config.
        ds: the full encoded dataset (test rows are read only by the protocols).
    """

    cfg: ExperimentConfig
    ds: EncodedDataset
    view: EncodedDataset = field(init=False)
    towers: dict[tuple[str, int], UserModel] = field(default_factory=dict)
    tasks: dict[tuple[str, int], EvalTask] = field(default_factory=dict)
    timings: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        self.view = training_view(self.ds)

    def task(self, protocol: ProtocolName, seed: int) -> EvalTask:
        """Evaluation task of ``protocol``; AUC negatives are drawn with ``seed``."""
        key = (protocol, seed)
        if key not in self.tasks:
            self.tasks[key] = build_task(
                self.ds, protocol, self.cfg.auc_negatives, seed, self.cfg.max_test_users
            )
        return self.tasks[key]

    def tower(
        self, merge: Literal["attention", "concat", "attention_concat"], seed: int
    ) -> UserModel:
        """Stage-1 model with the given merge, trained once per seed."""
        from ralm.user.train import train_user_model

        key = (merge, seed)
        if key not in self.towers and merge == self.cfg.user.merge and self.cfg.run_dir is not None:
            from ralm.user.checkpoint import load_user_model

            self.towers[key] = load_user_model(self.cfg.run_dir / "user", self.ds)
        if key not in self.towers:
            t0 = time.perf_counter()
            cfg = self.cfg.user.model_copy(update={"merge": merge})
            tc = self.cfg.user_train.model_copy(update={"seed": seed})
            self.towers[key] = train_user_model(self.view, cfg, train_cfg=tc)
            self.timings[f"stage1_{merge}_s"].append(time.perf_counter() - t0)
        return self.towers[key]

    def make(self, name: str, seed: int) -> Recommender:
        """A fresh (unfitted) model by config name; stage-1 towers come trained."""
        cfg = self.cfg
        model: Recommender
        if name == "random":
            model = RandomRecommender(seed)
        elif name == "popularity":
            model = Popularity()
        elif name == "lr":
            model = LogisticRegression(cfg.lr)
        elif name == "yahoo":
            model = YahooLookalike(cfg.yahoo)
        elif name == "item_knn":
            model = ItemKNN(cfg.item_knn)
        elif name == "user_knn":
            model = UserKNN(cfg.user_knn)
        elif name == "ease":
            model = EASE(cfg.ease)
        elif name == "youtube_dnn":
            model = TowerDotProduct(name=DISPLAY[name], model=self.tower("concat", seed))
        elif name == "ralm_tower":
            model = TowerDotProduct(name=DISPLAY[name], model=self.tower(cfg.user.merge, seed))
        elif name in ("ralm", "ralm_average", "ralm_paper"):
            variant = "average" if name == "ralm_average" else "ralm"
            update: dict[str, object] = {"variant": variant}
            if name == "ralm_paper":
                update["seed_prior"] = False  # the paper's cosine score exactly
            train_cfg = cfg.lookalike_train
            if name == "ralm_paper":  # nor a per-user baseline (a post-hoc fit of ours)
                train_cfg = train_cfg.model_copy(update={"user_offset": False})
            trained = None
            if name == "ralm" and cfg.run_dir is not None:
                from ralm.lookalike.checkpoint import load_lookalike_model

                trained = load_lookalike_model(cfg.run_dir / "lookalike")[0]
            model = RalmRecommender(
                cfg.lookalike.model_copy(update=update),
                train_cfg,
                user_model=self.tower(cfg.user.merge, seed),  # the configured stage 1
                name=DISPLAY[name],
                lookalike_model=trained,
            )
        else:
            raise ValueError(f"unknown model {name!r}")
        model.name = DISPLAY.get(name, model.name)
        return model

    def fit(self, model: Recommender, key: str, seed: int) -> Recommender:
        """Fit on the training view and record the time under ``fit_<key>_s``."""
        t0 = time.perf_counter()
        model.fit(self.view, seed)
        self.timings[f"fit_{key}_s"].append(time.perf_counter() - t0)
        return model
