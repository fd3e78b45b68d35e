"""Training: overfitting a tiny set, determinism, resume, early stopping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ralm.data.batching import gather_users
from ralm.data.encoded import EncodedDataset, Split
from ralm.data.toy import make_toy_dataset
from ralm.user.checkpoint import UserModel
from ralm.user.examples import positive_pairs

from .helpers import tiny_configs, train_tiny


def _state(model: UserModel) -> dict[str, torch.Tensor]:
    return {**model.tower.state_dict(), "items": model.item_embedding}


def test_tiny_model_overfits_tiny_dataset() -> None:
    ds = make_toy_dataset(n_users=40, n_items=30, clicks_per_user=6, n_cold_items=0, seed=3)
    ds.interactions.split[:] = Split.TRAIN  # no VALID rows: the last epoch is returned
    model = train_tiny(
        ds, dim=32, mlp_hidden=[64], epochs=100, patience=0, lr=3e-2, n_negatives=29, batch_size=64
    )
    losses = [h["train_loss"] for h in model.history]
    assert len(losses) == 100 and losses[-1] < 0.25 * losses[0]
    # the trained model puts each training click in the user's top 5 (history bag minus target)
    users, items = positive_pairs(ds)
    with torch.no_grad():
        u = model.tower(gather_users(ds, users, exclude_items=items))  # (n, d)
        scores = u @ model.item_embedding.T  # (n, I)
    rank = (scores > scores[torch.arange(len(items)), torch.from_numpy(items)][:, None]).sum(1)
    assert (rank < 5).float().mean() > 0.95


def test_beats_popularity_on_planted_groups() -> None:
    ds = make_toy_dataset(n_users=1500, n_items=150, seed=1)
    model = train_tiny(ds, epochs=6, patience=0)
    assert model.metrics["recall"] > model.metrics["popularity_recall"] + 0.05


def test_same_seed_same_weights_other_seed_differs(toy: EncodedDataset) -> None:
    a = _state(train_tiny(toy, epochs=2, seed=4))
    b = _state(train_tiny(toy, epochs=2, seed=4))
    c = _state(train_tiny(toy, epochs=2, seed=5))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_exactly(toy: EncodedDataset, tmp_path: Path) -> None:
    cfg = {"epochs": 3, "patience": 0, "monitor": "loss"}
    straight = train_tiny(toy, tmp_path / "a", **cfg)
    train_tiny(toy, tmp_path / "b", epochs=1, patience=0, monitor="loss")
    resumed = train_tiny(toy, tmp_path / "b", resume=True, **cfg)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    np.testing.assert_allclose(
        [h["train_loss"] for h in resumed.history], [h["train_loss"] for h in straight.history]
    )
    sa, sb = _state(straight), _state(resumed)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k])


def test_early_stopping_keeps_best_epoch(toy: EncodedDataset) -> None:
    # a huge learning rate makes validation degrade quickly; patience 1 must stop early
    model = train_tiny(toy, epochs=30, patience=1, lr=0.5)
    hist = model.history
    assert len(hist) < 30
    best = max(h["recall"] for h in hist)
    assert model.metrics["recall"] == best
    assert hist[-1]["epoch"] - model.metrics["epoch"] == 1


def test_lazy_adam_first_step_equals_dense_adam(toy: EncodedDataset) -> None:
    """On the first step Adam leaves untouched rows at 0/(0+eps) = 0, like lazy Adam."""
    from ralm.user.optim import StageOneOptimizer
    from ralm.user.sampler import LogUniformSampler
    from ralm.user.task import UserTrainTask
    from ralm.user.tower import UserItemModel
    from ralm.user.train import train_step

    users, items = positive_pairs(toy)
    sampler = LogUniformSampler(toy.n_items, toy.item_popularity_rank())
    neg = sampler.sample((64, 10), np.random.default_rng(0))
    states = []
    for sparse in (True, False):
        cfg, tc = tiny_configs(sparse_grad=sparse)
        torch.manual_seed(0)
        net = UserItemModel(toy.fields, toy.n_items, cfg)
        init = {k: v.clone() for k, v in net.state_dict().items()}
        opt = StageOneOptimizer(net, tc)
        assert len(opt.optimizers) == (2 if sparse else 1)
        for o in opt.optimizers:  # SparseAdam scales eps by 1/sqrt(1 - beta2): make it moot
            for group in o.param_groups:
                group["eps"] = 1e-30
        task = UserTrainTask(net, sampler, tc)
        train_step(task, opt, task.make_batch(toy, users[:64], items[:64], neg=neg))
        states.append(net.state_dict())
    for k in states[0]:
        moved = [(s[k] != init[k]).any(dim=-1) if s[k].dim() == 2 else None for s in states]
        if moved[0] is not None:  # same rows move (untouched rows stay put in both)
            torch.testing.assert_close(moved[0], moved[1])
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=3e-6)


def test_steps_per_epoch_caps_each_epoch(toy: EncodedDataset) -> None:
    model = train_tiny(toy, epochs=2, patience=0, steps_per_epoch=3)
    assert [h["steps"] for h in model.history] == [3, 3]
    full = train_tiny(toy, epochs=1, batch_size=64)
    assert full.history[0]["steps"] == -(-positive_pairs(toy)[0].size // 64)


def test_train_validation_gap_note_says_only_what_is_true(caplog) -> None:
    """No "Candidates: none" leak warning: a leak is named only when a field could leak."""
    import logging
    from types import SimpleNamespace

    from ralm.data.encoded import FieldInfo
    from ralm.user.train import UserStage

    def note(fields: list[FieldInfo], excluded: list[str]) -> list[logging.LogRecord]:
        caplog.clear()
        fake = SimpleNamespace(
            ds=SimpleNamespace(fields=fields),
            cfg=tiny_configs(exclude_fields=excluded)[0],
            gap_noted=False,
        )
        with caplog.at_level(logging.INFO, logger="ralm.user.train"):
            for epoch in (4, 5):  # said once, not every epoch
                UserStage._note_generalisation_gap(  # type: ignore[arg-type]
                    fake, {"epoch": epoch, "train_loss": 1.0, "val_loss": 3.0}
                )
            UserStage._note_generalisation_gap(  # type: ignore[arg-type]
                SimpleNamespace(**{**vars(fake), "gap_noted": False}),
                {"epoch": 6, "train_loss": 2.0, "val_loss": 3.0},  # no gap: nothing
            )
        return list(caplog.records)

    history = FieldInfo("history", "multivalent", 10, item_history=True)
    genres = FieldInfo("genres", "multivalent", 5, derived_from_items=True)
    tags = FieldInfo("tags", "multivalent", 5)
    safe = note([history, genres], [])
    assert len(safe) == 1 and safe[0].levelno == logging.INFO
    assert "overfitting" in safe[0].getMessage() and "Candidates" not in safe[0].getMessage()
    risky = note([history, genres, tags], [])
    assert len(risky) == 1 and risky[0].levelno == logging.WARNING
    assert "['tags']" in risky[0].getMessage()
    assert note([history, tags], ["tags"])[0].levelno == logging.INFO
