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
        prior: "log_count" (``+ gamma log(1 + n)``) or "shrink" (``s * n / (n + n0)``).
        shrink_seeds: ``n0`` of the "shrink" prior.
        prior_scale: multiplier of the learned log-count prior at scoring time.
        prior_cap: seed count above which the log-count prior is flat (0 = none).
        young_age: age (seconds since the item's first click) below which an item counts
            as young; 0 = none recorded (no young-item boost).
        young_boost: the most a young item's seed count is scaled up by the audience prior
            (``n * clamp(young_age / age, 1, young_boost)``; 1 = off).
        learn_weights: learn the alpha/beta ratio (their sum stays fixed).
        center: subtract the population's mean transformed embedding after the ReLU.
        init_scale: initial value of the learnable scale inside the sigmoid.
        kmeans_niter: Lloyd iterations of a cold-start k-means.
        kmeans_warm_niter: Lloyd iterations when warm-started from previous centroids.
        kmeans_backend: "torch" (default: batched Lloyd over buckets of items with similar
            seed counts) or "faiss" (per-item faiss k-means, one thread).
        k_rule: "fixed" (k clusters per item) or "seeds" (item i uses
            ``min(k, ceil(n_seeds_i / seeds_per_cluster))`` of its k slots, the rest masked).
        seeds_per_cluster: seeds per cluster of the "seeds" rule.
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
    prior: Literal["log_count", "shrink"] = Field(
        default="log_count",
        description="Form of the audience prior when seed_prior: 'log_count' adds gamma * "
        "log(1 + n_seeds); 'shrink' multiplies the look-alike score by n / (n + "
        "shrink_seeds) instead (thin evidence counts less, a clear audience is not "
        "penalised for being young).",
    )
    prior_scale: float = Field(
        default=1.0,
        ge=0.0,
        description="Multiplier of the learned 'log_count' prior at scoring time (1 = as "
        "trained; < 1 trades warm accuracy for young items; 0 = look-alike term only).",
    )
    prior_cap: float = Field(
        default=0.0,
        ge=0.0,
        description="Seeds above which the 'log_count' prior stops growing: gamma * log(1 + "
        "min(n, prior_cap)) (0 = no cap). Past the cap audience size no longer counts and "
        "the look-alike term alone orders items (a young item with a clear audience is "
        "not ranked below a mature one for its size).",
    )
    young_age: float = Field(
        default=0.0,
        ge=0.0,
        description="Age in seconds (now - the item's first click) below which the audience "
        "prior extrapolates an item's seed count: n * clamp(young_age / age, 1, young_boost) "
        "(a young item is judged by its click rate, not by the clicks it has had time to "
        "collect). 0 = none: `ralm train lookalike` sets it from TRAIN (the median age of an "
        "item at its TRAIN clicks) when the data has real timestamps.",
    )
    young_boost: float = Field(
        default=10.0,
        ge=1.0,
        description="Most a young item's seed count is scaled up by (1 = off).",
    )
    shrink_seeds: float = Field(
        default=10.0,
        gt=0.0,
        description="Seeds at which the 'shrink' prior keeps half of the look-alike score.",
    )
    learn_weights: bool = Field(
        default=False,
        description="Learn the global/local mix instead of the fixed alpha/beta: "
        "alpha' = (alpha + beta) sigmoid(w), beta' = alpha + beta - alpha', w starting at "
        "the configured ratio (alpha + beta keeps the scale; the ratio is learned).",
    )
    center: bool = Field(
        default=False,
        description="Centre the transformed space: subtract the mean transformed embedding "
        "of the users (refreshed at every re-clustering, saved with the model) after the "
        "ReLU, so cosines compare a user's and the seeds' departures from the average user.",
    )
    init_scale: float = Field(
        default=5.0, gt=0.0, description="Initial calibration scale in sigmoid."
    )
    kmeans_niter: int = Field(default=20, ge=1, description="Lloyd iterations of a cold k-means.")
    kmeans_backend: Literal["faiss", "torch"] = Field(
        default="torch",
        description="'torch' = batched Lloyd over items of similar seed count (deterministic "
        "per item, 2-6x faster, same k-means objective); 'faiss' = one faiss k-means per item.",
    )
    kmeans_warm_niter: int = Field(
        default=5, ge=1, description="Lloyd iterations when warm-started."
    )
    k_rule: Literal["fixed", "seeds"] = Field(
        default="fixed",
        description="'fixed' = k clusters per item; 'seeds' = min(k, ceil(n_seeds / "
        "seeds_per_cluster)) clusters per item (fewer, larger clusters for sparse items; the "
        "unused slots are masked).",
    )
    seeds_per_cluster: int = Field(
        default=5, ge=1, description="Seeds per cluster of k_rule='seeds'."
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
        neg_sampling: "uniform" over warm items, "popularity" (proportional to TRAIN clicks)
            or "log_uniform" (eq. 3 of the popularity rank, the stage-1 sampler).
        loss: "bce" (pointwise) or "softmax" (listwise over the batch's items, see
            :class:`ralm.lookalike.task.LookalikeTrainTask`).
        logq: logQ correction of the softmax logits (False = in-batch popularity kept).
        calibrate: "valid" refits scale/bias on VALID after training (post hoc), "none" not.
        user_offset: with ``calibrate`` "valid", first fit the per-user score baseline on
            VALID (:mod:`ralm.lookalike.user_offset`).
        fit_prior: after training, multiply the audience prior's learned weight by the
            factor (0.5-3) with the best VALID recall@``eval_k`` (full-catalogue ranking).
        calib_weight: weight of the calibration BCE term of the softmax loss.
        monitor: validation metric for early stopping and the best checkpoint: "auc"
            (VALID clicks vs sampled negatives) or "recall" (recall@``eval_k`` of VALID
            clicks ranked among every item with seeds, up to ``val_max_users`` users).
        val_neg_ratio: sampled negatives per VALID click for the validation AUC.
        max_val_pos: cap on VALID positives used for the AUC (0 = all).
        target_cache_gib: precompute the (fixed) target embeddings of all TRAIN positives
            once when they fit in this many GiB, instead of calling stage 1 per batch.
        finetune_user: train the stage-1 user tower through the stage-2 loss (end to end).
        finetune_lr_mult: learning rate of the tower under ``finetune_user``, as a multiple
            of ``lr``.
        matmul_dtype: input precision of the softmax loss's large products (float32,
            bfloat16 = mixed precision, auto = bfloat16 where the CPU has it natively).
    """

    epochs: int = Field(default=10, ge=1, description="Maximum epochs (re-cluster after each).")
    neg_ratio: int = Field(
        default=1,
        ge=1,
        description="Sampled negatives per positive (rows of an epoch: 1 + neg_ratio per "
        "TRAIN click; with the softmax loss every row's item is also a column).",
    )
    neg_sampling: Literal["uniform", "popularity", "log_uniform"] = Field(
        default="log_uniform",
        description="Negative item distribution over items with TRAIN seeds ('log_uniform' = "
        "the eq. 3 sampler of stage 1 over popularity ranks).",
    )
    loss: Literal["bce", "softmax"] = Field(
        default="softmax",
        description="'bce' = pointwise BCE against the sampled negatives; 'softmax' = sampled "
        "softmax of each click over every item of the batch (in-batch + sampled negatives, "
        "logQ-corrected, learned temperature), plus a BCE term on the detached score that "
        "fits only the pCTR scale/bias (calibration).",
    )
    logq: bool = Field(
        default=True,
        description="Subtract log Q(item) (expected copies per batch) from the softmax "
        "logits. True = consistent full-softmax estimate (the popularity goes to the prior); "
        "False = in-batch popularity stays in the look-alike term.",
    )
    calibrate: Literal["none", "valid"] = Field(
        default="valid",
        description="'valid' = after training, refit the pCTR scale/bias by BCE on the VALID "
        "examples (Platt scaling, post hoc; the ranking is unchanged); 'none' = keep the "
        "trained ones.",
    )
    fit_prior: bool = Field(
        default=True,
        description="After training, rescale the audience prior's learned weight gamma by the "
        "factor (0.5, 0.7, 1, 1.4, 2, 3) with the best VALID recall@eval_k over every item "
        "(model selection on the reported ranking; 1 unless another wins by 1%). It costs "
        "six VALID rankings; off keeps the trained gamma (docs/LOOKALIKE.md).",
    )
    user_offset: bool = Field(
        default=True,
        description="With calibrate 'valid', before the Platt fit: a per-user baseline "
        "w cos(e_u, d) is subtracted from every score of the user (d = the mean unit global "
        "vector of the indexed items; w by logistic regression on VALID clicks against "
        "uniformly drawn negatives, kept only if their pooled AUC does not fall). Each "
        "user's ranking is unchanged; scores of different users become comparable (pooled "
        "AUC, pCTR). Off = no baseline.",
    )
    calib_weight: float = Field(
        default=1.0,
        ge=0.0,
        description="Weight of the calibration BCE term in the 'softmax' loss.",
    )
    monitor: Literal["auc", "recall"] = Field(
        default="recall",
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
    matmul_dtype: Literal["float32", "bfloat16", "auto"] = Field(
        default="float32",
        description="Input precision of the softmax loss's two large products (all-pairs "
        "scores, global attention): 'bfloat16' = mixed-precision training, 2-3x faster "
        "products on a CPU with native bf16 (AVX512-BF16 / AMX; emulated and slow "
        "elsewhere, with a warning); 'auto' = bfloat16 where native, else float32. "
        "Validation, the index and serving stay float32.",
    )
    finetune_user: bool = Field(
        default=False,
        description="End-to-end: fine-tune the stage-1 user tower through the stage-2 loss "
        "(target users are embedded by the tower in the graph; every user is re-embedded "
        "before each re-clustering). Needs the tower (Python API / `ralm evaluate`).",
    )
    finetune_lr_mult: float = Field(
        default=0.1,
        gt=0.0,
        description="Learning rate of the fine-tuned user tower as a multiple of lr.",
    )
