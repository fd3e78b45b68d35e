"""Stage 2's Adam: fused (``ralm.training.optim.dense_adam``) against torch's for-loop Adam,
and a for-loop state resumed through the stage-2 checkpoint on the fused kernel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ralm.lookalike.checkpoint import load_train_state, save_train_state
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.seed_clusters import SeedClusters
from ralm.training.optim import dense_adam


def _model() -> LookalikeModel:
    torch.manual_seed(0)
    return LookalikeModel(LookalikeConfig(m=8, h=8, k=3))


def _fit(model: LookalikeModel, opt: torch.optim.Optimizer, steps: int) -> None:
    g = torch.Generator().manual_seed(1)
    users = torch.randn(6, 8, generator=g)
    cent = torch.randn(6, 3, 8, generator=g)
    mask = torch.ones(6, 3, dtype=torch.bool)
    for _ in range(steps):
        e = model.transform(users)
        s = model.score_pairs(e, cent, mask, sizes=torch.full((6, 3), 2))
        loss = (model.pctr(s) - 0.3).pow(2).sum() + (model.inv_temperature * s).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_fused_adam_equals_for_loop_adam_on_the_stage2_parameter_groups() -> None:
    ours, ref = _model(), _model()
    opt = dense_adam(ours.param_groups(0.01), lr=0.01, weight_decay=0.001)
    assert all(g["fused"] is True for g in opt.param_groups)
    assert len({g["lr"] for g in opt.param_groups}) == 2  # the scalars' own learning rate
    ref_opt = torch.optim.Adam(ref.param_groups(0.01), lr=0.01, weight_decay=0.001)
    _fit(ours, opt, 6)
    _fit(ref, ref_opt, 6)
    moved = 0.0
    for (name, a), b, c in zip(
        ours.named_parameters(), ref.parameters(), _model().parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6, msg=name)
        moved = max(moved, float((a - c).detach().abs().max()))
    assert moved > 0.01  # the steps did move the weights


def test_a_for_loop_state_resumes_on_the_fused_kernel(tmp_path: Path) -> None:
    ref = _model()
    ref_opt = torch.optim.Adam(ref.param_groups(0.01), lr=0.01)
    _fit(ref, ref_opt, 3)
    clusters = SeedClusters(
        centroids=np.zeros((2, 3, 8), np.float32),
        mask=np.ones((2, 3), bool),
        sizes=np.ones((2, 3), np.int64),
        assign=np.zeros(6, np.int64),
    )
    save_train_state(tmp_path, ref, ref_opt, clusters, {"epoch": 3})
    model = _model()
    opt = dense_adam(model.param_groups(0.01), lr=0.01)
    load_train_state(tmp_path, model, opt)
    assert all(g["fused"] is True for g in opt.param_groups)
    # both continue with the same moments and step counts: same weights after more steps
    _fit(ref, ref_opt, 3)
    _fit(model, opt, 3)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-6)
