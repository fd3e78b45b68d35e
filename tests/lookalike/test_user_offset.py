"""The per-user score baseline (``[lookalike_train] user_offset``): every score of a user
lowered by ``w cos(e_u, d)``, fitted on VALID; each user's ranking unchanged."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ralm.data.encoded import EncodedDataset
from ralm.evaluation.metrics import auc
from ralm.lookalike.calibration import fit_logistic, fit_platt
from ralm.lookalike.checkpoint import load_lookalike_model
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.train import train_lookalike
from ralm.lookalike.user_offset import fit_offset_weight, fit_user_offset, offset_direction

M = 12  # width of the `universal` fixture in conftest.py
FAST = LookalikeTrainConfig(epochs=1, batch_size=64, lr=0.01, patience=0, seed=0, fit_prior=False)


def items(n_items: int = 9, k: int = 3, h: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n_items, k, h, generator=g)
    mask = torch.ones(n_items, k, dtype=torch.bool)
    mask[0, 1:] = False
    sizes = torch.randint(1, 6, (n_items, k), generator=g) * mask
    return {"centroids": c, "mask": mask, "sizes": sizes}


def ref_cos(e: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Independent reference: cos(e_u, d) in float64."""
    e, d = e.astype(np.float64), d.astype(np.float64)
    return (e @ d) / (np.linalg.norm(e, axis=1) * np.linalg.norm(d))


def test_fit_logistic_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    y = (rng.random(4000) < 1 / (1 + np.exp(-(1.5 * x[:, 0] - 0.8 * x[:, 1] + 0.3)))).astype(float)
    w = fit_logistic(x, y)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(w[:2], ref.coef_[0], rtol=1e-5)
    assert w[2] == pytest.approx(ref.intercept_[0], rel=1e-5)
    a, b = fit_platt(x[:, 0], y)  # the one-feature case is the Platt fit
    ref1 = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x[:, :1], y)
    assert (a, b) == pytest.approx((ref1.coef_[0, 0], ref1.intercept_[0]), rel=1e-5)


def test_no_offset_by_default_and_old_states_load() -> None:
    model = LookalikeModel(LookalikeConfig(m=6, h=8, k=3))
    assert float(model.user_offset_weight) == 0.0
    assert model.user_offset(torch.randn(4, 8)) is None
    state = {
        k: v for k, v in model.state_dict().items() if not k.startswith("user_offset")
    }  # a checkpoint written before the baseline existed
    fresh = LookalikeModel(LookalikeConfig(m=6, h=8, k=3))
    with torch.no_grad():
        fresh.user_offset_weight.fill_(2.0)
    fresh.load_state_dict(state)
    assert float(fresh.user_offset_weight) == 2.0  # a missing entry keeps the current value
    LookalikeModel(LookalikeConfig(m=6, h=8, k=3)).load_state_dict(state)  # strict, loads


def test_every_scorer_subtracts_the_baseline_and_keeps_each_ranking() -> None:
    torch.manual_seed(0)
    cfg = LookalikeConfig(m=6, h=8, k=3)
    plain = LookalikeModel(cfg).eval()
    model = LookalikeModel(cfg).eval()
    model.load_state_dict(plain.state_dict())
    d = torch.rand(8)
    with torch.no_grad():
        model.user_offset_dir.copy_(d)
        model.user_offset_weight.fill_(0.7)
    t = items()
    e_u = model.transform(torch.randn(5, 6)).detach()
    want_off = 0.7 * ref_cos(e_u.numpy(), d.numpy())  # (5,)
    with torch.no_grad():
        gv = plain.item_global(t["centroids"], t["mask"], t["sizes"])
        s0 = plain.score(e_u, t["centroids"], t["mask"], gv, sizes=t["sizes"])
        s1 = model.score(e_u, t["centroids"], t["mask"], gv, sizes=t["sizes"])
    np.testing.assert_allclose(s0.numpy() - s1.numpy(), np.repeat(want_off[:, None], 9, 1),
                               atol=1e-6)  # fmt: skip
    assert (s0.argsort(dim=1) == s1.argsort(dim=1)).all()
    # the pair scorer and the training scorer (autograd) subtract the same baseline
    eu = e_u.clone().requires_grad_(True)
    s_train = model.score_train(eu, t["centroids"], t["mask"], gv, sizes=t["sizes"])
    torch.testing.assert_close(s_train.detach(), s1, atol=1e-5, rtol=0)
    s_train.sum().backward()  # differentiable through the baseline
    assert eu.grad is not None and torch.isfinite(eu.grad).all()
    j = torch.arange(5)
    with torch.no_grad():
        pair = model.score_pairs(e_u, t["centroids"][j], t["mask"][j], gv[j], sizes=t["sizes"][j])
    torch.testing.assert_close(pair, s1[j, j], atol=1e-5, rtol=0)


def test_offset_direction_is_the_mean_unit_global_vector() -> None:
    t = items(n_items=6)
    model = LookalikeModel(LookalikeConfig(m=6, h=8, k=3)).eval()
    with torch.no_grad():
        gv = model.item_global(t["centroids"], t["mask"], t["sizes"]).numpy()
    sizes = t["sizes"].numpy().copy()
    sizes[2] = 0  # an item without seeds does not count
    ix = SimpleNamespace(sizes=sizes, global_vec=gv)  # the two tables it reads
    keep = [0, 1, 3, 4, 5]
    want = (gv[keep] / np.linalg.norm(gv[keep], axis=1, keepdims=True)).mean(axis=0)
    np.testing.assert_allclose(offset_direction(ix).numpy(), want, atol=1e-6)  # type: ignore[arg-type]


def test_the_fit_removes_a_planted_user_level() -> None:
    """Scores = signal + 0.8 * base(u), labels from the signal only: the fitted weight
    recovers 0.8 and the pooled AUC rises; with a base that carries the labels the
    baseline would hurt, so no weight is kept."""
    rng = np.random.default_rng(1)
    n_users, per = 400, 10
    base_u = rng.normal(size=n_users)
    users = np.repeat(np.arange(n_users), per)
    signal = rng.normal(size=users.size)
    y = (rng.random(users.size) < 1 / (1 + np.exp(-3 * signal))).astype(float)
    s = signal + 0.8 * base_u[users]
    w = fit_offset_weight(s, base_u[users], y)
    assert w == pytest.approx(0.8, abs=0.08)
    assert auc(y, s - w * base_u[users]) > auc(y, s) + 0.02
    informative = (rng.random(users.size) < 1 / (1 + np.exp(-3 * base_u[users]))).astype(float)
    assert fit_offset_weight(s, base_u[users], informative) < 0  # would add the base, not remove


def test_training_fits_saves_and_reports_the_baseline(
    toy: EncodedDataset, universal: np.ndarray, lookup, tmp_path: Path
) -> None:
    assert LookalikeTrainConfig().user_offset  # on by default
    res = train_lookalike(
        toy, LookalikeConfig(m=M, h=8, k=3), universal, lookup, tmp_path / "lk", train_cfg=FAST
    )
    cal = res.calibration
    assert {"user_offset_weight", "val_auc_raw", "val_auc_offset"} <= set(cal)
    assert cal["val_auc_offset"] >= cal["val_auc_raw"]
    w = float(res.model.user_offset_weight)
    assert w == pytest.approx(cal["user_offset_weight"], rel=1e-6)
    np.testing.assert_allclose(
        res.model.user_offset_dir.numpy(), offset_direction(res.seed_index).numpy(), atol=1e-6
    )
    loaded, _ = load_lookalike_model(tmp_path / "lk")
    assert float(loaded.user_offset_weight) == pytest.approx(w, rel=1e-6)
    torch.testing.assert_close(loaded.user_offset_dir, res.model.user_offset_dir)
    off = train_lookalike(
        toy, LookalikeConfig(m=M, h=8, k=3), universal, lookup,
        train_cfg=FAST.model_copy(update={"user_offset": False}),
    )  # fmt: skip
    assert float(off.model.user_offset_weight) == 0.0
    assert "user_offset_weight" not in off.calibration


def test_fit_refuses_a_model_that_has_one(toy: EncodedDataset, universal, lookup) -> None:  # type: ignore[no-untyped-def]
    res = train_lookalike(toy, LookalikeConfig(m=M, h=8, k=3), universal, lookup, train_cfg=FAST)
    with torch.no_grad():
        res.model.user_offset_weight.fill_(0.5)
    y = np.r_[np.ones(5), np.zeros(5)]
    with pytest.raises(ValueError, match="already has a user baseline"):
        fit_user_offset(res.model, res.seed_index, np.zeros(10), universal[:10], y)
