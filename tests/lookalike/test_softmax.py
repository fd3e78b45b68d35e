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
    tc = FAST.model_copy(update={"loss": "softmax", "neg_sampling": "log_uniform", "epochs": 3})
    res = train_lookalike(toy, cfg, universal, lookup, train_cfg=tc)
    assert res.best_val_auc > 0.7  # planted groups separated
    last = res.history[-1]
    assert 0.0 <= last["val_ece"] < 0.15  # calibrated to the 1:4 validation click share
    assert res.model.inv_temperature.item() != pytest.approx(10.0)  # the temperature learned
