"""Typed experiment configuration (``ralm experiment CONFIG.toml``).

Every section maps onto the config model of the stage it drives, so any stage-1, stage-2,
LR or Yahoo hyper-parameter can be overridden from the TOML file. See
``src/ralm/configs/experiment-ml100k-quick.toml`` for an annotated example.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ralm.data.splits import SplitConfig
from ralm.errors import ConfigError
from ralm.evaluation.baselines.ease import EASEConfig
from ralm.evaluation.baselines.lr import LRConfig
from ralm.evaluation.baselines.neighbours import KNNConfig
from ralm.evaluation.baselines.yahoo import YahooConfig
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.user.config import UserModelConfig, UserTrainConfig

ModelName = Literal[
    "random",
    "popularity",
    "lr",
    "yahoo",
    "youtube_dnn",
    "ralm_tower",
    "ralm_average",
    "ralm_paper",
    "ralm",
    "item_knn",
    "user_knn",
    "ease",
]
ProtocolName = Literal["warm", "cold", "mixed", "mixed_warm", "full", "copy"]
AttentionTerms = Literal["both", "local", "global"]
ALL_PROTOCOLS: list[ProtocolName] = ["warm", "cold", "mixed", "mixed_warm", "full", "copy"]
ALL_TERMS: list[AttentionTerms] = ["both", "local", "global"]
ALL_MODELS: list[ModelName] = [
    "random", "popularity", "lr", "yahoo", "youtube_dnn", "ralm_average", "ralm",
    "item_knn", "user_knn", "ease",
]  # fmt: skip


class DataConfig(BaseModel):
    """Where the encoded dataset comes from.

    Args:
        source: ``ralm.data.prepare`` source (``movielens-100k``, ``ml100k:DIR``,
            ``ml1m:DIR``, ``recbole:DIR``, a generic dataset TOML) or ``toy`` (the small
            planted in-memory set, for tests).
        dir: encoded dataset folder. Loaded when it exists and ``reuse`` is true (its split
            must match ``split``); otherwise the source is prepared into it.
        reuse: reuse an existing encoded dataset in ``dir``.
        split: how the data layer splits the interactions (``given`` for a user-given
            train/test pair, ``random_per_user`` for the usual MovieLens protocol...).
        encoded: an encoded dataset folder used exactly as it is (source, dir and split
            are then ignored), e.g. one written by ``ralm data prepare``.
    """

    model_config = ConfigDict(extra="forbid")

    source: str = Field(default="movielens-100k", description="ralm.data.prepare source.")
    dir: Path | None = Field(default=None, description="Encoded dataset folder (read or written).")
    reuse: bool = Field(default=True, description="Reuse an encoded dataset already in `dir`.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Split parameters.")
    encoded: Path | None = Field(default=None, description="Encoded dataset used as is.")


class AblationConfig(BaseModel):
    """The paper's ablations, run on RALM (stage 1 shared with the main run).

    Args:
        seeds: seeds of the ablation runs (each a subset of the main seeds is cheapest).
        protocol: protocol the ablations are measured on.
        k: clusters per item to compare (paper: 5, 10, 20, 50, 100).
        k_retrain: retrain stage 2 for every k (slow) instead of re-clustering the seeds of
            the trained model with each k at evaluation time.
        merge: compare the attention merge with concatenation (stage 1 retrained).
        attention: which attention terms to compare: both, local only, global only.
        alpha_beta: (alpha, beta) score weights to compare.
        retrain: retrain stage 2 for attention / alpha-beta variants instead of switching
            the terms at evaluation time.
    """

    model_config = ConfigDict(extra="forbid")

    seeds: list[int] = Field(default_factory=lambda: [0], description="Seeds of ablation runs.")
    protocol: ProtocolName = Field(default="warm", description="Protocol the ablations use.")
    k: list[int] = Field(default_factory=lambda: [5, 10, 20, 50, 100], description="k values.")
    k_retrain: bool = Field(default=False, description="Retrain stage 2 per k.")
    merge: bool = Field(default=True, description="Attention merge vs concat ablation.")
    attention: list[AttentionTerms] = Field(
        default_factory=lambda: list(ALL_TERMS), description="Attention terms."
    )
    alpha_beta: list[tuple[float, float]] = Field(
        default_factory=lambda: [(0.3, 0.7), (0.5, 0.5), (0.7, 0.3)],
        description="(alpha, beta) pairs.",
    )
    retrain: bool = Field(default=True, description="Retrain attention/alpha-beta runs.")


class ExperimentConfig(BaseModel):
    """A complete, reproducible experiment: data, models, seeds, protocols, ablations.

    Args:
        name: experiment name (report folder name).
        out_dir: parent folder of the report.
        seeds: run seeds (>= 3 for a mean ± std headline table); each seed retrains
            every model (initialisation, example and negative sampling, k-means, AUC pairs).
        protocols: any of ``warm``, ``cold``, ``mixed`` (cold items ranked among every warm
            item), ``full`` (standard full ranking, every known click excluded, recall /
            NDCG at 20 and 50) and ``copy`` (the copy-test diagnostic); see
            :mod:`ralm.evaluation.protocols`.
        models: models compared (``ralm_tower`` = RALM's stage-1 tower scored by dot product;
            ``item_knn``, ``user_knn`` and ``ease`` are the classic references).
        ks: cut-offs of the top-K metrics.
        auc_negatives: sampled non-clicked candidates per test click for AUC / GAUC.
        max_test_users: evaluate a seeded subset of test users (None = all).
        long_tail_head: share of the most popular candidates forming the head.
        data: dataset source and split.
        user: stage-1 model config (YouTube DNN uses it with ``merge="concat"``).
        user_train: stage-1 training loop (shared by RALM's tower and YouTube DNN).
        lookalike: stage-2 model config.
        lookalike_train: stage-2 training loop.
        lr: LR baseline.
        yahoo: Yahoo look-alike baseline.
        item_knn: item-kNN reference (neighbours per item).
        user_knn: user-kNN look-alike reference (neighbours per user).
        ease: EASE reference (λ, dense-solve limit).
        ablations: ablation grid, or None to skip.
        run_dir: a trained run folder with ``user/`` and ``lookalike/`` checkpoints (from
            ``ralm train``); RALM and its tower are then evaluated from them instead of
            being trained per seed (other models are still trained per seed).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="experiment", min_length=1, description="Experiment name.")
    out_dir: Path = Field(default=Path("reports"), description="Parent folder of the report.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="Seeds.")
    protocols: list[ProtocolName] = Field(
        default_factory=lambda: list(ALL_PROTOCOLS), min_length=1, description="Protocols."
    )
    models: list[ModelName] = Field(
        default_factory=lambda: list(ALL_MODELS), min_length=1, description="Models compared."
    )
    ks: list[int] = Field(default_factory=lambda: [10, 50], min_length=1, description="Top-K.")
    auc_negatives: int = Field(default=10, ge=1, description="Negatives per test click for AUC.")
    max_test_users: int | None = Field(default=None, ge=1, description="Subsample test users.")
    long_tail_head: float = Field(default=0.2, gt=0, lt=1, description="Head share for long tail.")
    data: DataConfig = Field(default_factory=lambda: DataConfig(), description="Dataset.")
    user: UserModelConfig = Field(default_factory=UserModelConfig, description="Stage-1 model.")
    user_train: UserTrainConfig = Field(
        default_factory=UserTrainConfig, description="Stage-1 training."
    )
    lookalike: LookalikeConfig = Field(default_factory=LookalikeConfig, description="Stage 2.")
    lookalike_train: LookalikeTrainConfig = Field(
        default_factory=LookalikeTrainConfig, description="Stage-2 training."
    )
    lr: LRConfig = Field(default_factory=lambda: LRConfig(), description="LR baseline.")
    yahoo: YahooConfig = Field(default_factory=lambda: YahooConfig(), description="Yahoo baseline.")
    item_knn: KNNConfig = Field(default_factory=lambda: KNNConfig(), description="item-kNN.")
    user_knn: KNNConfig = Field(default_factory=lambda: KNNConfig(), description="user-kNN.")
    ease: EASEConfig = Field(default_factory=lambda: EASEConfig(), description="EASE.")
    ablations: AblationConfig | None = Field(default=None, description="Ablations (None = skip).")
    run_dir: Path | None = Field(default=None, description="Trained checkpoints to evaluate.")

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if any(k < 1 for k in self.ks):
            raise ValueError("ks must be positive")
        if len(set(self.models)) != len(self.models):
            raise ValueError("models lists a model twice")
        return self


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment TOML file; errors name the file and the field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"experiment config {p} not found")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from e
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        msgs = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"{p}: {msgs}") from e
