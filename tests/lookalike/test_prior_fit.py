"""The audience prior's weight chosen on VALID's full-catalogue ranking (``fit_prior``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.prior_fit import PRIOR_FACTORS, _softplus_inverse, fit_prior_weight
from ralm.lookalike.samples import seed_sets
from ralm.lookalike.train import train_lookalike
from ralm.lookalike.validation import build_ranking_set, ranking_recall

M = 12  # width of the `universal` fixture in conftest.py
FAST = LookalikeTrainConfig(epochs=1, batch_size=64, lr=0.01, patience=0, seed=0, fit_prior=False)


@pytest.fixture(scope="module")
def trained(toy: EncodedDataset, universal: np.ndarray):  # type: ignore[no-untyped-def]
    """A model trained without the fit, its seed index and VALID's ranking set."""

    def lookup(users: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        return universal[users]

    res = train_lookalike(toy, LookalikeConfig(m=M, h=8, k=3), universal, lookup, train_cfg=FAST)
    assert res.prior_fit == {}  # switched off
    rs = build_ranking_set(toy, seed_sets(toy), 5000, 0)
    assert rs is not None
    return res, rs


@pytest.mark.parametrize("y", [1e-6, 0.02, 0.7, 5.0, 40.0])
def test_softplus_inverse(y: float) -> None:
    x = _softplus_inverse(y)
    got = float(torch.nn.functional.softplus(torch.tensor(x, dtype=torch.float64)))
    assert got == pytest.approx(y, rel=1e-12)


@pytest.mark.parametrize("min_gain", [0.01, 0.0])
def test_fit_matches_the_prior_scale_knob(trained, universal: np.ndarray, min_gain: float) -> None:  # type: ignore[no-untyped-def]
    """Every factor's recall equals scoring the trained model with ``prior_scale`` = factor
    (an independent path: the config multiplier, not the folded weight), the chosen factor
    follows the rule (best, ties to 1, a move off 1 only for > 1 % relative gain), and the
    fitted model scores exactly like the trained one at ``prior_scale`` = that factor."""
    res, rs = trained
    model = copy.deepcopy(res.model)
    g0 = float(res.model.gamma.detach())
    got = fit_prior_weight(model, res.seed_index, universal, rs, k=5, min_gain=min_gain)
    want = {}
    for f in PRIOR_FACTORS:
        ref = copy.deepcopy(res.model)
        ref.config = ref.config.model_copy(update={"prior_scale": f})
        want[f] = ranking_recall(ref, res.seed_index, universal, rs, 5)
        assert got["recall_by_factor"][str(f)] == pytest.approx(want[f], abs=1e-12)
    assert len(set(want.values())) > 1  # the factor moves the ranking here
    top = max(want.values())
    best = min((f for f in want if want[f] == top), key=lambda f: abs(np.log(f)))
    expect = best if top > want[1.0] * (1 + min_gain) else 1.0
    assert got["prior_factor"] == expect
    assert got["gamma_trained"] == pytest.approx(g0, rel=1e-6)
    assert got["gamma"] == pytest.approx(expect * g0, rel=1e-5)
    ref = copy.deepcopy(res.model)
    ref.config = ref.config.model_copy(update={"prior_scale": expect})
    t = res.seed_index.tensors()
    e_u = torch.from_numpy(universal[:20])
    with torch.no_grad():
        a = model.score(model.transform(e_u), t["centroids"], t["mask"], t["global_vec"],
                        gram=t["gram"], sizes=t["sizes"])  # fmt: skip
        b = ref.score(ref.transform(e_u), t["centroids"], t["mask"], t["global_vec"],
                      gram=t["gram"], sizes=t["sizes"])  # fmt: skip
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_factor_one_keeps_the_trained_weight_bit_for_bit(trained, universal: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    res, rs = trained
    model = copy.deepcopy(res.model)
    got = fit_prior_weight(model, res.seed_index, universal, rs, k=10, factors=(1.0,))
    assert got["prior_factor"] == 1.0
    assert torch.equal(model.prior_weight, res.model.prior_weight)


def test_no_additive_prior_no_fit(trained, universal: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    res, rs = trained
    for update in ({"seed_prior": False}, {"prior": "shrink"}):
        model = copy.deepcopy(res.model)
        model.config = model.config.model_copy(update=update)
        assert fit_prior_weight(model, res.seed_index, universal, rs, k=10) == {}
        assert torch.equal(model.prior_weight, res.model.prior_weight)


def test_train_lookalike_fits_and_saves_the_weight(toy, universal, lookup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Training with ``fit_prior`` reports the fit and the saved model file carries the
    chosen weight (the default); without it nothing is fitted."""
    from ralm.lookalike.checkpoint import load_lookalike_model

    assert LookalikeTrainConfig().fit_prior  # on by default
    tc = FAST.model_copy(update={"fit_prior": True})
    res = train_lookalike(
        toy, LookalikeConfig(m=M, h=8, k=3), universal, lookup, tmp_path / "lk", train_cfg=tc
    )
    fit = res.prior_fit
    assert set(fit) == {"prior_factor", "gamma_trained", "gamma", "recall_by_factor"}
    assert fit["prior_factor"] in PRIOR_FACTORS
    assert float(res.model.gamma.detach()) == pytest.approx(fit["gamma"], rel=1e-6)
    loaded, _ = load_lookalike_model(tmp_path / "lk")
    assert float(loaded.gamma.detach()) == pytest.approx(fit["gamma"], rel=1e-6)
