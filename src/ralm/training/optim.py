"""Dense Adam for both stages: fused (one kernel for every parameter) where torch has it.

``torch.optim.Adam(fused=True)`` runs one kernel over all parameters instead of ~12
element-wise ops per parameter; its update equals the for-loop one up to float rounding
(~5e-7, ``tests/user/test_fast_paths.py``). Measured: 6x less optimiser CPU time on the
stage-1 ML-100K parameter set; on a stage-2 step (15 parameters, batch 256) see
docs/LOOKALIKE.md, "Fused Adam".

The kernel is a property of the process, not of a saved state: :func:`load_keeping_kernel`
restores a state (moments, step counts, learning rates) but keeps this optimiser's
``fused`` / ``foreach`` choice, so a state saved by the for-loop kernel resumes fused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

KERNEL_KEYS = ("fused", "foreach")


def dense_adam(params: Iterable[Any], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``params`` (tensors or param-group dicts), fused when
    torch supports it for their device and dtype, else the default kernel."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device / dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def load_keeping_kernel(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``opt.load_state_dict(state)``, keeping ``opt``'s own fused / foreach choice."""
    kernels = [{k: g.get(k) for k in KERNEL_KEYS} for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, kern in zip(opt.param_groups, kernels, strict=True):
        g.update(kern)
