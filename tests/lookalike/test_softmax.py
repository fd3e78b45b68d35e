"""The listwise (sampled softmax) stage-2 loss, its logQ correction and the ECE report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ralm.data.encoded import EncodedDataset
from ralm.lookalike.calibration import expected_calibration_error
from ralm.lookalike.clustering import cluster_seeds
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import negative_distribution, seed_sets, training_examples
from ralm.lookalike.seed_index import transform_seeds
from ralm.lookalike.task import LookalikeTrainTask, make_batch
from ralm.lookalike.train import train_lookalike
from ralm.user.sampler import log_uniform_probs

M = 12  # width of the `universal` fixture in conftest.py

FAST = LookalikeTrainConfig(epochs=2, batch_size=64, lr=0.01, patience=5, seed=0)


def test_ece_against_a_naive_loop() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = (rng.random(500) < p**2).astype(float)
    naive = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        sel = (p >= lo) & ((p < hi) if b < 9 else (p <= hi))
        if sel.any():
            naive += sel.sum() / p.size * abs(y[sel].mean() - p[sel].mean())
    assert expected_calibration_error(y, p) == pytest.approx(naive)
    assert expected_calibration_error(np.ones(4), np.ones(4)) == 0.0
    assert expected_calibration_error(np.zeros(4), np.ones(4)) == 1.0


def test_log_uniform_negatives_follow_eq3_over_items_with_seeds(toy: EncodedDataset) -> None:
    seeds = seed_sets(toy)
    p = negative_distribution(toy, seeds, "log_uniform")
    counts = seeds.counts
    assert p.sum() == pytest.approx(1.0) and np.all(p[counts == 0] == 0)
    order = np.argsort(-counts, kind="stable")  # rank 0 = most seeds
    expected = log_uniform_probs(counts.size)[: int((counts > 0).sum())]
    np.testing.assert_allclose(p[order][: expected.size], expected / expected.sum(), rtol=1e-9)


def test_softmax_loss_equals_a_naive_cross_entropy(toy: EncodedDataset, universal) -> None:
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=M, h=8, k=3))
    seeds = seed_sets(toy)
    emb = transform_seeds(model, universal, seeds.users)
    cl = cluster_seeds(emb, seeds.offsets, k=3, seed=0)
    users, items, labels = training_examples(toy, seeds, 2, "uniform", np.random.default_rng(0))
    users, items, labels = users[:32], items[:32], labels[:32]
    log_q = np.log(np.arange(1, toy.n_items + 1, dtype=np.float64))  # any correction
    b = make_batch(cl, emb, seeds, universal[users], users, items, labels, item_log_q=log_q)
    task = LookalikeTrainTask(model, loss="softmax", calib_weight=0.5)
    loss = task(b)
    # naive: one pair at a time through score_pairs with the column's own clusters
    with torch.no_grad():
        e_u = model.transform(b.target)
        s = torch.stack(
            [
                model.score_pairs(e_u[r].expand(32, -1), b.centroids, b.mask, sizes=b.sizes)
                for r in range(32)
            ]
        )  # (32, 32)
        inv_t = model.inv_temperature
        it = toy.interactions
        train = it.split == 0
        seed_pairs = set(zip(it.user[train].tolist(), it.item[train].tolist(), strict=True))
        ce = []
        for r in np.flatnonzero(labels > 0):
            cols = [
                c
                for c in range(32)
                if c == r or not ((users[r], items[c]) in seed_pairs or items[c] == items[r])
            ]
            lg = np.asarray([float(inv_t * s[r, c] - log_q[items[c]]) for c in cols])
            ce.append(-lg[cols.index(r)] + float(np.log(np.exp(lg).sum())))
        diag = torch.diagonal(s)
        calib = F.binary_cross_entropy_with_logits(model.logit(diag), b.labels)
    assert float(loss.detach()) == pytest.approx(float(np.mean(ce)) + 0.5 * float(calib), rel=1e-4)


def test_softmax_training_learns_and_stays_calibrated(
    toy: EncodedDataset, universal, lookup
) -> None:
    cfg = LookalikeConfig(m=M, h=8, k=3)
    # the trained head fits the training click share (1 : neg_ratio); 4 = VALID's share
    tc = FAST.model_copy(
        update={"loss": "softmax", "neg_sampling": "log_uniform", "epochs": 3, "neg_ratio": 4}
    )
    res = train_lookalike(toy, cfg, universal, lookup, train_cfg=tc)
    assert res.best_val_auc > 0.7  # planted groups separated
    last = res.history[-1]
    assert 0.0 <= last["val_ece"] < 0.15  # calibrated to the 1:4 validation click share
    assert res.model.inv_temperature.item() != pytest.approx(10.0)  # the temperature learned


def test_prior_options_against_closed_forms() -> None:
    torch.manual_seed(0)
    base = LookalikeModel(LookalikeConfig(m=M, h=8, k=3, seed_prior=False))
    e_u = base.transform(torch.randn(4, M))
    cent, mask = torch.randn(5, 3, 8), torch.ones(5, 3, dtype=torch.bool)
    sizes = torch.tensor([[1, 0, 0], [2, 2, 1], [5, 5, 5], [10, 20, 30], [1, 1, 1]])
    n = sizes.sum(1).float()
    with torch.no_grad():
        gv = base.item_global(cent, mask, sizes)
        paper = base.score(e_u, cent, mask, gv, sizes=sizes)  # (4, 5)
        for name, cfg in (
            ("log_count", {"prior": "log_count"}),
            ("scaled", {"prior": "log_count", "prior_scale": 0.25}),
            ("shrink", {"prior": "shrink", "shrink_seeds": 4.0}),
        ):
            m = LookalikeModel(base.config.model_copy(update={"seed_prior": True, **cfg}))
            m.load_state_dict(base.state_dict())
            got = m.score(e_u, cent, mask, gv, sizes=sizes)
            pairs = m.score_pairs(e_u[:1].expand(5, -1), cent, mask, gv, sizes=sizes)
            if name == "shrink":
                want = paper * (n / (n + 4.0))[None, :]
            else:
                mult = 0.25 if name == "scaled" else 1.0
                want = paper + mult * m.gamma * torch.log1p(n)[None, :]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(pairs, want[0], atol=1e-5, rtol=1e-5)


def test_state_without_temperature_loads_with_the_initial_one() -> None:
    """Checkpoints written before the softmax loss (no ``log_inv_temp``) still load."""
    model = LookalikeModel(LookalikeConfig(m=M, h=8, k=3))
    old = {k: v for k, v in model.state_dict().items() if k != "log_inv_temp"}
    other = LookalikeModel(LookalikeConfig(m=M, h=8, k=3))
    other.load_state_dict(old)
    assert other.inv_temperature.item() == pytest.approx(10.0)
    with pytest.raises(RuntimeError):
        other.load_state_dict({**old, "unexpected": torch.zeros(1)})


def test_platt_fit_recovers_a_known_logistic_model() -> None:
    from ralm.lookalike.calibration import cross_fitted_ece, fit_platt

    rng = np.random.default_rng(0)
    s = rng.normal(size=20000)
    y = (rng.random(s.size) < 1 / (1 + np.exp(-(2.0 * s - 1.0)))).astype(float)
    a, b = fit_platt(s, y)
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-1.0, abs=0.1)
    assert cross_fitted_ece(s, y) < 0.02


def test_logq_switch_changes_only_the_correction(toy: EncodedDataset, universal, lookup) -> None:
    """``logq=False`` trains with a zero correction (a constant cancels in the softmax)."""
    from ralm.lookalike.train import LookalikeStage

    cfg = LookalikeConfig(m=M, h=8, k=3)
    model = LookalikeModel(cfg)
    task = LookalikeTrainTask(model, loss="softmax")
    opt = torch.optim.Adam(model.parameters())
    stages = {
        flag: LookalikeStage(
            toy, cfg, FAST.model_copy(update={"loss": "softmax", "logq": flag}), task, opt,
            universal, lookup, None,
        )
        for flag in (True, False)
    }  # fmt: skip
    on, off = stages[True].item_log_q(), stages[False].item_log_q()
    assert on is not None and off is not None and np.all(off == 0)
    counts = seed_sets(toy).counts.astype(float)
    pop, neg = counts / counts.sum(), negative_distribution(toy, seed_sets(toy), "log_uniform")
    r = FAST.neg_ratio  # a click's item, or one of its r sampled negatives
    want = np.log(np.maximum(64 * (pop / (1 + r) + r * neg / (1 + r)), 1e-30))
    np.testing.assert_allclose(on, want, rtol=1e-12)
    bce = LookalikeStage(toy, cfg, FAST.model_copy(update={"loss": "bce"}), task, opt,
                         universal, lookup, None)  # fmt: skip
    assert bce.item_log_q() is None


def test_score_train_equals_score_and_has_gradients() -> None:
    """The listwise loss's differentiable scores are the serving scores, with autograd."""
    import torch

    from ralm.lookalike.config import LookalikeConfig
    from ralm.lookalike.model import LookalikeModel

    for prior in ("log_count", "shrink"):
        torch.manual_seed(0)
        model = LookalikeModel(LookalikeConfig(m=8, h=8, k=3, prior=prior))
        c = torch.rand(5, 3, 8)
        mask = torch.ones(5, 3, dtype=torch.bool)
        mask[0, 2] = False
        n = torch.randint(1, 6, (5, 3)) * mask
        e_u = model.transform(torch.randn(4, 8))
        g = model.item_global(c, mask, n)
        s = model.score_train(e_u, c, mask, g, sizes=n)
        assert s.requires_grad
        s.sum().backward()
        w_grad = model.local_attention.weight.grad
        assert w_grad is not None and float(w_grad.abs().sum()) > 0  # the attention learns
        torch.testing.assert_close(
            s.detach(),
            model.score(e_u.detach(), c, mask, g.detach(), sizes=n),
            rtol=1e-5,
            atol=1e-5,
        )
