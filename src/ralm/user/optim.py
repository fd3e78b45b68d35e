"""Stage-1 optimiser: Adam (paper), lazy for the embedding tables when gradients are sparse.

With ``sparse_grad`` the embedding tables (feature tables and the item table) produce
sparse gradients and are updated by lazy Adam (:class:`LazyAdam`, the update of
``torch.optim.SparseAdam``: moments and weights move only for the rows a step touched);
every other parameter uses dense ``torch.optim.Adam``.

Speed (issue 9, profiled on ML-100K and the wechat preset, one thread):

- ``torch.optim.SparseAdam`` adds its row updates to the moments and the weights as
  ``dense.add_(sparse)``, which on CPU rewrites the whole table: three passes over every
  43,500 x 128 table per step, the largest cost of a wechat step. :class:`LazyAdam` does
  the same arithmetic on the touched rows only (``index_select`` / ``index_add_``), so its
  cost follows the rows used, not the table size; bit-identical to ``SparseAdam`` (tested).
- dense Adam runs ``fused=True`` where torch supports it
  (:func:`ralm.training.optim.dense_adam`, shared with stage 2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ralm.training.optim import dense_adam, load_keeping_kernel
from ralm.user.config import UserTrainConfig


class LazyAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` with row-indexed updates (same math, same state dict).

    For the unique rows ``r`` of a step's (coalesced) gradient ``g``::

        m[r] += (1 - b1) (g - m[r]);  v[r] += (1 - b2) (g^2 - v[r])
        p[r] -= lr sqrt(1 - b2^t) / (1 - b1^t) * m[r] / (sqrt(v[r]) + eps)

    the element-wise operations of ``torch.optim._functional.sparse_adam`` in the same
    order, with ``index_add_`` in place of ``dense.add_(sparse)``.

    Args:
        params: tables whose gradients are sparse (``nn.Embedding(sparse=True)``).
        lr: learning rate.
        betas: Adam's moment decays.
        eps: denominator term.
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One lazy Adam update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = float(group["lr"]), group["eps"]
            maximize = group.get("maximize", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("LazyAdam takes sparse gradients only (use Adam)")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grad = (-p.grad if maximize else p.grad).coalesce()  # unique rows
                values = grad._values()  # (R, d)
                if values.numel() == 0:
                    continue
                rows = grad._indices()[0]  # (R,)
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                old_m = m.index_select(0, rows)  # (R, d)
                upd_m = values.sub(old_m).mul_(1 - beta1)
                m.index_add_(0, rows, upd_m)
                old_v = v.index_select(0, rows)
                upd_v = values.pow(2).sub_(old_v).mul_(1 - beta2)
                v.index_add_(0, rows, upd_v)
                numer = upd_m.add_(old_m)
                denom = upd_v.add_(old_v).sqrt_().add_(eps)
                step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p.index_add_(0, rows, -step_size * numer.div_(denom))
        return loss


class StageOneOptimizer:
    """One or two Adam optimisers behind a single step/zero_grad/state_dict interface.

    Args:
        net: the model (tower + item table).
        cfg: ``lr`` and ``weight_decay`` (dense parameters only). Tables built with
            ``sparse=True`` get lazy Adam (:class:`LazyAdam`).
    """

    def __init__(self, net: nn.Module, cfg: UserTrainConfig) -> None:
        sparse: list[torch.Tensor] = [
            m.weight
            for m in net.modules()
            if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse
        ]
        ids = {id(p) for p in sparse}
        dense = [p for p in net.parameters() if id(p) not in ids]
        self.optimizers: list[torch.optim.Optimizer] = [
            dense_adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)
        ]
        if sparse:
            self.optimizers.append(LazyAdam(sparse, lr=cfg.lr))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state; raises ValueError when the optimiser layout differs.

        The kernel choice (``fused`` / ``foreach``) is this process's, not the saved one's
        (a state written before fused Adam resumes on the fused kernel).
        """
        states = state.get("optimizers")
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            raise ValueError("optimizer layout differs (was sparse_grad changed?)")
        for opt, st in zip(self.optimizers, states, strict=True):
            load_keeping_kernel(opt, st)
