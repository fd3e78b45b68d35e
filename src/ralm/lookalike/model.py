"""The stage-2 look-alike network (paper Fig. 3, right): pure tensors in, tensors out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ralm.lookalike import scorer
from ralm.lookalike.attention import GlobalAttention, LocalAttention, log_sizes
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.transform import TransformingLayer


class LookalikeModel(nn.Module):
    """Transforming layer + local/global attention + calibrated cosine score.

    Seeds are represented per item by k centroids (clustering happens outside the module,
    see :mod:`ralm.lookalike.clustering`). The "average" variant stores one centroid per
    item, the mean of its seeds; attention over one slot is the identity, so the same
    scorer gives ``(alpha + beta) cos(E_u, mean seed)``.

    Args:
        config: hyper-parameters (dimensions, k, alpha/beta, variant, ablation switches).

    Example::

        model = LookalikeModel(LookalikeConfig(m=32, h=16, k=4))
        e_u = model.transform(torch.randn(8, 32))                  # (8, 16)
        c, mask = torch.rand(5, 4, 16), torch.ones(5, 4, dtype=torch.bool)
        n = torch.full((5, 4), 3)                                    # cluster sizes
        s = model.score(e_u, c, mask, model.item_global(c, mask, n), sizes=n)  # (8, 5)
        p = model.pctr(s)
    """

    user_offset_dir: torch.Tensor  # (h,) buffer of the user baseline (user_offset)
    user_offset_weight: torch.Tensor  # () buffer, 0 = no baseline

    def __init__(self, config: LookalikeConfig) -> None:
        super().__init__()
        self.config = config
        self.transform_layer = TransformingLayer(config.m, config.h, center=config.center)
        self.local_attention = LocalAttention(config.h)
        self.global_attention = GlobalAttention(config.h)
        self.scale = nn.Parameter(torch.tensor(float(config.init_scale)))
        self.bias = nn.Parameter(torch.tensor(0.0))
        # gamma = softplus(prior_weight) >= 0 of the audience-size prior (config.seed_prior):
        # a larger audience never counts against an item. Starts near the paper's score.
        self.prior_weight = nn.Parameter(torch.tensor(-4.0))
        # log inverse temperature of the listwise (softmax) training loss; the ranking does
        # not depend on it. Checkpoints written before it existed load with the initial value.
        self.log_inv_temp = nn.Parameter(torch.tensor(float(np.log(10.0))))
        # learned global/local mix (config.learn_weights): alpha' = (alpha+beta) sigmoid(w)
        if config.learn_weights:
            total = config.alpha + config.beta
            a = min(max(config.alpha / total, 1e-3), 1 - 1e-3) if total > 0 else 0.5
            self.mix_logit = nn.Parameter(torch.tensor(float(np.log(a / (1 - a)))))
        # the user's baseline, subtracted from each of the user's scores (fitted after
        # training, ralm.lookalike.user_offset): w cos(e_u, d); w = 0 = none
        self.register_buffer("user_offset_dir", torch.zeros(config.h))
        self.register_buffer("user_offset_weight", torch.zeros(()))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``; a state without ``log_inv_temp`` (written before
        the softmax loss existed) keeps the current temperature, and one without the user
        baseline (written before it existed) loads with none (weight 0)."""
        missing = {
            k: getattr(self, k).detach().clone()
            for k in ("log_inv_temp", "user_offset_dir", "user_offset_weight")
            if k not in state_dict
        }
        if missing:
            state_dict = {**state_dict, **missing}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def user_offset(self, e_u: torch.Tensor) -> torch.Tensor | None:
        """The user's baseline ``w cos(e_u, d)`` (B,) from transformed users (B, h), or None
        when there is none (``w`` = 0, the default and every model trained without it).

        ``d`` is the mean unit global vector of the items the model was indexed with, so
        ``cos(e_u, d)`` is the user's average global cosine over those items: how much the
        user resembles every audience at once. Every score of the user is lowered by it
        (:meth:`score_prepared`, :meth:`score_pairs`, :meth:`score_train`), which leaves
        each user's ranking unchanged and makes scores of different users comparable (the
        pooled AUC, the pCTR); ``w`` is fitted on VALID (docs/LOOKALIKE.md, "User
        baseline")."""
        w = float(self.user_offset_weight)
        if w == 0.0:
            return None
        d = self.user_offset_dir.to(e_u.dtype)
        return w * scorer.safe_cos(e_u @ d, (e_u * e_u).sum(dim=-1), (d * d).sum())

    def _minus_offset(self, s: torch.Tensor, e_u: torch.Tensor) -> torch.Tensor:
        """Scores (B, ...) less each user's :meth:`user_offset` (unchanged without one)."""
        off = self.user_offset(e_u)
        if off is None:
            return s
        return s - off.reshape(off.shape + (1,) * (s.dim() - 1))

    @property
    def inv_temperature(self) -> torch.Tensor:
        """Inverse temperature of the softmax loss, ``exp(log_inv_temp) > 0``."""
        return self.log_inv_temp.exp()

    def param_groups(self, lr: float, scalar_lr_mult: float = 10.0) -> list[dict]:
        """Optimiser groups: the scalars (scale, bias, gamma) learn ``scalar_lr_mult`` times
        faster than the weight matrices, so calibration and the audience-size prior settle
        within an epoch (at the base rate gamma moved 0.04 in two ML-100K epochs)."""
        scalars = [self.scale, self.bias, self.prior_weight, self.log_inv_temp]
        if self.config.learn_weights:
            scalars.append(self.mix_logit)
        ids = {id(p) for p in scalars}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": scalars, "lr": lr * scalar_lr_mult}]

    def mix_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha, beta)`` of the score as tensors: the config's, or the learned mix
        ``(alpha + beta) sigmoid(w)``, ``alpha + beta - alpha'`` (``learn_weights``)."""
        cfg = self.config
        if not cfg.learn_weights:
            return torch.tensor(cfg.alpha), torch.tensor(cfg.beta)
        total = cfg.alpha + cfg.beta
        a = total * torch.sigmoid(self.mix_logit)
        return a, total - a

    @property
    def alpha_beta(self) -> tuple[float, float]:
        """The score's ``(alpha, beta)`` as floats (see :meth:`mix_weights`)."""
        a, b = self.mix_weights()
        return float(a.detach()), float(b.detach())

    def transform(self, universal: torch.Tensor) -> torch.Tensor:
        """Universal embeddings (N, m) -> transformed embeddings (N, h)."""
        return self.transform_layer(universal)

    def log_prior(self, sizes: torch.Tensor | None) -> torch.Tensor | None:
        """Attention prior from cluster sizes (I, k), or None when the model does not use it."""
        if not self.config.size_prior:
            return None
        if sizes is None:
            raise ValueError(
                "this look-alike model weights attention by cluster size (size_prior=True): "
                "pass sizes, e.g. SeedIndex.sizes"
            )
        return log_sizes(sizes)

    def young_factor(self, age: torch.Tensor | None) -> torch.Tensor | None:
        """``clamp(young_age / age, 1, young_boost)`` per item from ages in seconds (...)
        (the time since each item's first click), or None when the model has no young-item
        rule (``young_age`` 0, ``young_boost`` 1) or no ages are given. A young item's seed
        count is scaled by it in the audience prior: its click rate over ``young_age``."""
        cfg = self.config
        if age is None or cfg.young_age <= 0 or cfg.young_boost <= 1.0:
            return None
        a = torch.as_tensor(age, dtype=torch.float64).clamp(min=0.0)
        f = (cfg.young_age / a.clamp(min=cfg.young_age / cfg.young_boost)).clamp(min=1.0)
        return f.to(torch.float32)

    def seed_count(self, sizes: torch.Tensor, age: torch.Tensor | None = None) -> torch.Tensor:
        """Seeds per item as the audience prior counts them, (..., k) -> (...): the sum of
        the cluster sizes, scaled by :meth:`young_factor` for young items."""
        n = sizes.to(torch.float32).clamp(min=0).sum(dim=-1)  # (...) seeds per item
        f = self.young_factor(age)
        return n if f is None else n * f

    def seed_prior_term(
        self, sizes: torch.Tensor | None, age: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``gamma * log(1 + n_seeds)`` per item from cluster sizes (..., k) -> (...)
        (``n_seeds`` scaled up for young items by ``age`` (...) seconds since the first
        click, see :meth:`young_factor`, then capped at ``config.prior_cap`` when set)."""
        if not self.config.seed_prior:
            return None
        if sizes is None:
            raise ValueError(
                "this look-alike model adds an audience-size prior (seed_prior=True): "
                "pass sizes, e.g. SeedIndex.sizes"
            )
        n = self.seed_count(sizes, age)
        if self.config.prior_cap > 0:
            n = n.clamp(max=self.config.prior_cap)
        gamma = (
            self.gamma if self.config.prior_scale == 1.0 else self.gamma * self.config.prior_scale
        )
        return gamma * torch.log1p(n)

    def shrink_weight(
        self, sizes: torch.Tensor | None, age: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``n / (n + shrink_seeds)`` per item from cluster sizes (..., k) -> (...): the
        'shrink' prior's trust in an item's look-alike evidence (``n`` as
        :meth:`seed_count` counts it)."""
        if sizes is None:
            raise ValueError("the 'shrink' prior needs sizes, e.g. SeedIndex.sizes")
        n = self.seed_count(sizes, age)
        return n / (n + self.config.shrink_seeds)

    @property
    def shrinks(self) -> bool:
        """True when the audience prior is the 'shrink' multiplier, not an additive term."""
        return self.config.seed_prior and self.config.prior == "shrink"

    def with_prior(
        self, s: torch.Tensor, sizes: torch.Tensor | None, age: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw look-alike scores (..., I) with the audience prior applied (the one rule:
        ``s * n / (n + shrink_seeds)`` for 'shrink', else ``s + gamma log(1 + n)``; ``age``
        (I,) seconds since each item's first click, for :meth:`young_factor`)."""
        if self.shrinks:
            return s * self.shrink_weight(sizes, age)
        prior = self.seed_prior_term(sizes, age)  # (I,) broadcast over the leading dims
        return s if prior is None else s + prior

    @property
    def gamma(self) -> torch.Tensor:
        """Weight of the audience-size prior, ``softplus(prior_weight) >= 0``."""
        return nn.functional.softplus(self.prior_weight)

    def item_global(
        self,
        centroids: torch.Tensor,
        mask: torch.Tensor,
        sizes: torch.Tensor | None = None,
        matmul_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Global-attention vector of every item: (I, k, h), (I, k), (I, k) -> (I, h).
        ``matmul_dtype`` bfloat16: mixed-precision training (the index is built in float32)."""
        return self.global_attention(centroids, mask, self.log_prior(sizes), matmul_dtype)

    def prepare_items(
        self,
        centroids: torch.Tensor,
        mask: torch.Tensor,
        global_vec: torch.Tensor,
        gram: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
        dtype: torch.dtype | str = torch.float32,
        age: torch.Tensor | None = None,
    ) -> scorer.ItemTerms:
        """Per-item constants of :meth:`score_prepared`, once per index version or chunk.

        Holds this model's size prior (log cluster sizes folded into the slot weights) and
        audience-size prior (``gamma log(1 + n_seeds)``): rebuild after the weights change.
        ``dtype`` bfloat16 stores the centroid table in half precision (see
        docs/LOOKALIKE.md for its measured accuracy).

        Args:
            centroids: (I, k, h) seed centroids.
            mask: (I, k) bool valid centroids.
            global_vec: (I, h) global vectors (:meth:`item_global`).
            gram: optional (I, k, k) ``C C^T``.
            sizes: (I, k) cluster sizes (required by ``size_prior`` / ``seed_prior``).
            dtype: centroid-table dtype (float32 or bfloat16).
            age: optional (I,) seconds since each item's first click (the audience prior's
                young-item rule, :meth:`young_factor`); None = every item counts as mature.
        """
        with torch.no_grad():
            shrink = self.shrinks
            prior = None if shrink else self.seed_prior_term(sizes, age)  # (I,) or None
            return scorer.prepare_items(
                centroids,
                mask,
                global_vec,
                gram=gram,
                log_prior=self.log_prior(sizes),
                prior=prior,
                dtype=dtype,
                scale=self.shrink_weight(sizes, age) if shrink else None,
            )

    def score_prepared(
        self, e_u: torch.Tensor, terms: scorer.ItemTerms, chunk_items: int = 1024
    ) -> torch.Tensor:
        """Scores (B, I) of users e_u (B, h) against prepared items (inference only)."""
        cfg = self.config
        alpha, beta = self.alpha_beta
        s = scorer.score_prepared(
            e_u,
            self.local_attention.weight,
            terms,
            alpha=alpha,
            beta=beta,
            use_local=cfg.use_local,
            use_global=cfg.use_global,
            chunk_items=chunk_items,
        )
        off = self.user_offset(e_u)
        return s if off is None else s.sub_(off[:, None].to(s.dtype))

    def score(
        self,
        e_u: torch.Tensor,
        centroids: torch.Tensor,
        mask: torch.Tensor,
        global_vec: torch.Tensor,
        gram: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
        chunk_items: int = 1024,
        age: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores (B, I) of users e_u (B, h) against I items (inference only, no autograd).

        ``s = alpha cos(E_u, E_global) + beta cos(E_u, E_local)`` in [-1, 1], plus
        ``gamma log(1 + n_seeds)`` when ``config.seed_prior``. ``sizes (I, k)`` (cluster
        sizes) is required when ``config.size_prior`` or ``config.seed_prior``; ``age``
        (I,) seconds since each item's first click (young items, :meth:`young_factor`).
        Equal to :meth:`prepare_items` then :meth:`score_prepared`; a caller scoring the
        same items for many requests should keep the prepared terms.
        """
        terms = self.prepare_items(centroids, mask, global_vec, gram=gram, sizes=sizes, age=age)
        return self.score_prepared(e_u, terms, chunk_items=chunk_items)

    def score_train(
        self,
        e_u: torch.Tensor,
        centroids: torch.Tensor,
        mask: torch.Tensor,
        global_vec: torch.Tensor,
        gram: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
        chunk_items: int = 4096,
        matmul_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Differentiable scores (B, I): the same terms as :meth:`score` (tested equal),
        through autograd, for listwise training losses. Serving uses :meth:`score`.
        ``matmul_dtype`` bfloat16: the all-pairs product in mixed precision (training)."""
        cfg, log_prior = self.config, self.log_prior(sizes)

        def term(local: bool | None) -> torch.Tensor:
            both = local is None  # the configured fixed weights, one call
            return scorer.score_matrix_train(
                e_u, self.local_attention.weight, centroids, mask, global_vec,
                alpha=cfg.alpha if both else 1.0, beta=cfg.beta if both else 1.0,
                use_local=cfg.use_local if both else bool(local),
                use_global=cfg.use_global if both else not local,
                gram=gram, log_prior=log_prior, chunk_items=chunk_items,
                matmul_dtype=matmul_dtype,
            )  # fmt: skip

        return self._minus_offset(self.with_prior(self._combine(term), sizes), e_u)  # (B, I)

    def score_pairs(
        self,
        e_u: torch.Tensor,
        centroids: torch.Tensor,
        mask: torch.Tensor,
        global_vec: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
        age: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Score (B,) of row-aligned pairs (same terms as :meth:`score`).

        ``global_vec`` is computed when None; ``sizes (B, k)`` are the example's cluster
        sizes (after leave-self-out in training); ``age`` (B,) as in :meth:`score`.
        """
        if global_vec is None:
            global_vec = self.item_global(centroids, mask, sizes)  # (B, h)
        cfg, log_prior, gv = self.config, self.log_prior(sizes), global_vec

        def term(local: bool | None) -> torch.Tensor:
            both = local is None  # the configured fixed weights, one call
            return scorer.score_pairs(
                e_u, self.local_attention.weight, centroids, mask, gv,
                alpha=cfg.alpha if both else 1.0, beta=cfg.beta if both else 1.0,
                use_local=cfg.use_local if both else bool(local),
                use_global=cfg.use_global if both else not local, log_prior=log_prior,
            )  # fmt: skip

        return self._minus_offset(self.with_prior(self._combine(term), sizes, age), e_u)  # (B,)

    def _combine(self, term: Callable[[bool | None], torch.Tensor]) -> torch.Tensor:
        """``alpha cos_global + beta cos_local``: ``term(None)`` (the scorer with the fixed
        weights) unless the mix is learned, then ``term(False)`` (global cosine) and
        ``term(True)`` (local cosine) weighted by the learned mix, differentiably; a
        switched-off term is not computed."""
        cfg = self.config
        if not cfg.learn_weights:
            return term(None)
        alpha, beta = self.mix_weights()
        s: torch.Tensor | None = None
        if cfg.use_global:
            s = alpha * term(False)
        if cfg.use_local:
            loc = beta * term(True)
            s = loc if s is None else s + loc
        assert s is not None  # the config requires one of the terms
        return s

    def logit(self, s: torch.Tensor) -> torch.Tensor:
        """Calibrated logit ``scale * s + bias`` (monotone in s: ranking unchanged)."""
        return self.scale * s + self.bias

    def pctr(self, s: torch.Tensor) -> torch.Tensor:
        """Predicted click probability ``sigmoid(scale * s + bias)``."""
        return torch.sigmoid(self.logit(s))
