"""Typed configuration of stage 2: the model (:class:`LookalikeConfig`) and its training
(:class:`LookalikeTrainConfig`), with the paper's defaults written once here."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ralm.training.config import TrainLoopConfig


class LookalikeConfig(BaseModel):
    """Look-alike model hyper-parameters (paper section 4.2; spec section 2).

    Args:
        m: dimension of the universal user embedding (stage-1 output).
        h: dimension after the transforming layer.
        k: number of seed clusters per item (k-means centroids).
        alpha: weight of cos(E_u, E_global) in the score.
        beta: weight of cos(E_u, E_local) in the score.
        variant: "ralm" (clusters + attention) or "average" (mean of seeds, k = 1).
        use_local: keep the local-attention term (ablation switch).
        use_global: keep the global-attention term (ablation switch).
        seed_prior: add a learnable ``gamma * log(1 + n_seeds)`` to the score. The paper's
            cosine score carries no information about how many users clicked an item, so
            an item with two look-alike seeds outranks one with a thousand; the paper's
            production system side-steps this by serving only items with ~100+ seeds.
            ``False`` gives the paper's score exactly.
        init_scale: initial value of the learnable scale inside the sigmoid.
        kmeans_niter: Lloyd iterations of a cold-start k-means.
        kmeans_warm_niter: Lloyd iterations when warm-started from previous centroids.
        kmeans_backend: "faiss" (per-item faiss k-means, one thread) or "torch" (batched
            Lloyd over buckets of items with similar seed counts).
    """

    model_config = ConfigDict(extra="forbid")

    m: int = Field(
        default=128, ge=1, description="Universal user embedding dimension (stage-1 output)."
    )
    h: int = Field(
        default=128, ge=1, description="Transformed embedding dimension (FC m->h + ReLU)."
    )
    k: int = Field(default=20, ge=1, description="Seed clusters per item (paper: 20).")
    alpha: float = Field(
        default=0.3, ge=0.0, description="Weight of cos(E_u, E_global) (paper: 0.3)."
    )
    beta: float = Field(
        default=0.7, ge=0.0, description="Weight of cos(E_u, E_local) (paper: 0.7)."
    )
    variant: Literal["ralm", "average"] = Field(
        default="ralm", description="'ralm' = clusters + attention; 'average' = mean of seeds."
    )
    use_local: bool = Field(
        default=True, description="Use the local (target-aware) attention term."
    )
    use_global: bool = Field(
        default=True, description="Use the global (target-free) attention term."
    )
    size_prior: bool = Field(
        default=True,
        description="Add log(cluster size) to attention logits (a centroid weighs like its seeds).",
    )
    seed_prior: bool = Field(
        default=True,
        description=(
            "Add a learnable gamma * log(1 + n_seeds) to the score (audience-size prior); "
            "False = the paper's cosine score exactly."
        ),
    )
    init_scale: float = Field(
        default=5.0, gt=0.0, description="Initial calibration scale in sigmoid."
    )
    kmeans_niter: int = Field(default=20, ge=1, description="Lloyd iterations of a cold k-means.")
    kmeans_backend: Literal["faiss", "torch"] = Field(
        default="faiss",
        description="'faiss' = one faiss k-means per item; 'torch' = batched Lloyd per bucket.",
    )
    kmeans_warm_niter: int = Field(
        default=5, ge=1, description="Lloyd iterations when warm-started."
    )

    @model_validator(mode="after")
    def _check(self) -> LookalikeConfig:
        if not (self.use_local or self.use_global):
            raise ValueError("at least one of use_local / use_global must be true")
        return self

    @property
    def n_clusters(self) -> int:
        """Clusters actually stored per item: k, or 1 for the 'average' variant."""
        return 1 if self.variant == "average" else self.k


class LookalikeTrainConfig(TrainLoopConfig):
    """Stage-2 training: pointwise BCE on clicks vs sampled negatives, Adam, re-clustering.

    The loop settings (``batch_size`` 256, ``lr`` 0.001 as in the paper, ``weight_decay``,
    ``steps_per_epoch``, ``max_train_examples``, ``patience``, ``seed``, ``threads``,
    ``eval_k``, ``val_max_users``) come
    from :class:`ralm.training.config.TrainLoopConfig`.

    Args:
        epochs: maximum number of epochs (one k-means re-clustering after each).
        neg_ratio: sampled non-clicked items per positive.
        neg_sampling: "uniform" over warm items or "popularity" (proportional to TRAIN clicks).
        monitor: validation metric for early stopping and the best checkpoint: "auc"
            (VALID clicks vs sampled negatives) or "recall" (recall@``eval_k`` of VALID
            clicks ranked among every item with seeds, up to ``val_max_users`` users).
        val_neg_ratio: sampled negatives per VALID click for the validation AUC.
        max_val_pos: cap on VALID positives used for the AUC (0 = all).
        target_cache_gib: precompute the (fixed) target embeddings of all TRAIN positives
            once when they fit in this many GiB, instead of calling stage 1 per batch.
    """

    epochs: int = Field(default=10, ge=1, description="Maximum epochs (re-cluster after each).")
    neg_ratio: int = Field(default=4, ge=1, description="Sampled negatives per positive.")
    neg_sampling: Literal["uniform", "popularity"] = Field(
        default="uniform", description="Negative item distribution over items with TRAIN seeds."
    )
    monitor: Literal["auc", "recall"] = Field(
        default="auc",
        description="Validation metric for early stopping: AUC of VALID clicks vs sampled "
        "negatives, or recall@eval_k of VALID clicks ranked among all items with seeds.",
    )
    val_neg_ratio: int = Field(
        default=4, ge=1, description="Negatives per VALID click for the AUC."
    )
    max_val_pos: int = Field(default=20000, ge=0, description="Cap on VALID positives (0 = all).")
    target_cache_gib: float = Field(
        default=2.0,
        ge=0.0,
        description="Embed every TRAIN positive once (target excluded) if it fits in this.",
    )
