"""Stage-2 training: leave-self-out, iterative re-clustering, learning, determinism, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset, Split
from ralm.errors import CheckpointError, ConfigError
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import seed_sets, training_examples
from ralm.lookalike.seed_index import build_seed_index, cluster_for_model, transform_seeds
from ralm.lookalike.train import leave_self_out, train_lookalike

M = 12  # width of the `universal` fixture in conftest.py

FAST = LookalikeTrainConfig(epochs=2, batch_size=256, patience=0)


def test_leave_self_out_removes_exactly_the_target(toy: EncodedDataset, universal) -> None:
    model = LookalikeModel(LookalikeConfig(m=M, h=8, k=3))
    seeds = seed_sets(toy)
    emb = transform_seeds(model, universal, seeds.users)
    cl = cluster_for_model(model, emb, seeds.offsets)
    rng = np.random.default_rng(0)
    users, items, labels = training_examples(toy, seeds, 2, "uniform", rng)
    cent, mask, sizes = leave_self_out(cl, emb, seeds, users, items)
    checked = {"seed": 0, "single": 0, "other": 0}
    for b in range(0, users.size, 7):
        u, i = users[b], items[b]
        lo, hi = seeds.offsets[i], seeds.offsets[i + 1]
        members = seeds.users[lo:hi]
        if u in members:
            r = lo + int(np.flatnonzero(members == u)[0])
            j = cl.assign[r]
            same = np.arange(lo, hi)[(cl.assign[lo:hi] == j) & (np.arange(lo, hi) != r)]
            assert sizes[b, j] == same.size
            if same.size == 0:
                assert not mask[b, j] and np.all(cent[b, j] == 0)
                checked["single"] += 1
            else:
                np.testing.assert_allclose(cent[b, j], emb[same].mean(0), atol=1e-4)
                checked["seed"] += 1
            others = np.arange(cl.k) != j
            np.testing.assert_array_equal(cent[b, others], cl.centroids[i, others])
            np.testing.assert_array_equal(sizes[b, others], cl.sizes[i, others])
        else:
            np.testing.assert_array_equal(cent[b], cl.centroids[i])
            np.testing.assert_array_equal(mask[b], cl.mask[i])
            np.testing.assert_array_equal(sizes[b], cl.sizes[i])
            checked["other"] += 1
    assert checked["seed"] > 10 and checked["other"] > 10
    # every positive is a TRAIN click, so its user is always a seed of its item
    assert np.all(seeds.find(users[labels > 0], items[labels > 0]) >= 0)


def test_recluster_after_weight_update_changes_centroids(toy: EncodedDataset, universal) -> None:
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=M, h=8, k=3))
    seeds = seed_sets(toy)
    csr = (seeds.offsets, seeds.users)
    first = build_seed_index(model, universal, csr)
    same = build_seed_index(model, universal, csr, init=first)
    np.testing.assert_allclose(same.centroids, first.centroids, atol=1e-4)
    assert same.version == first.version + 1
    with torch.no_grad():
        model.transform_layer.fc.weight.add_(
            0.5 * torch.randn_like(model.transform_layer.fc.weight)
        )
    moved = build_seed_index(model, universal, csr, init=first)
    assert np.abs(moved.centroids - first.centroids).max() > 1e-2


def test_loop_reclusters_every_epoch_and_learns(toy: EncodedDataset, universal, lookup) -> None:
    cfg = LookalikeConfig(m=M, h=8, k=3)
    # uniform negatives: the validation AUC is then against random items
    tc = FAST.model_copy(update={"epochs": 3, "neg_sampling": "uniform"})
    res = train_lookalike(toy, cfg, universal, lookup, train_cfg=tc)
    assert res.recluster_calls == 3 + 1  # initial clustering + one after every epoch
    assert [r["epoch"] for r in res.history] == [0, 1, 2]
    assert all(r["kmeans_s"] >= 0 and np.isfinite(r["inertia"]) for r in res.history)
    # planted groups: the look-alike score separates VALID clicks from random items
    assert res.best_val_auc > 0.7
    assert res.seed_index.n_items == toy.n_items and res.seed_index.k == 3


def test_positives_are_embedded_without_their_target(toy: EncodedDataset, universal) -> None:
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def target(users: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        calls.append((users.copy(), exclude.copy()))
        return universal[users]

    train_lookalike(toy, LookalikeConfig(m=M, h=8, k=3), universal, target, train_cfg=FAST)
    it = toy.interactions
    clicked = set(zip(it.user.tolist(), it.item.tolist(), strict=True))
    train = it.split == int(Split.TRAIN)
    train_clicks = set(zip(it.user[train].tolist(), it.item[train].tolist(), strict=True))
    n_excluded = 0
    for users, exclude in calls:
        for u, e in zip(users.tolist(), exclude.tolist(), strict=True):
            if e >= 0:
                assert (u, e) in clicked
                n_excluded += 1
    assert n_excluded >= len(train_clicks)  # every TRAIN positive excluded its item


def test_deterministic_and_resumable(
    toy: EncodedDataset, universal, lookup, tmp_path: Path
) -> None:
    cfg = LookalikeConfig(m=M, h=8, k=3)
    a = train_lookalike(toy, cfg, universal, lookup, tmp_path / "a", FAST)
    b = train_lookalike(toy, cfg, universal, lookup, tmp_path / "b", FAST)
    one = FAST.model_copy(update={"epochs": 1})
    train_lookalike(toy, cfg, universal, lookup, tmp_path / "c", one)
    c = train_lookalike(toy, cfg, universal, lookup, tmp_path / "c", FAST, resume=True)
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, atol=0, rtol=0)
        torch.testing.assert_close(c.model.state_dict()[k], v, atol=1e-6, rtol=1e-6)
    assert [r["val_auc"] for r in c.history] == pytest.approx([r["val_auc"] for r in a.history])
    for name in ("config.json", "model.safetensors", "seed_index/meta.json", "history.json"):
        assert (tmp_path / "a" / name).is_file()


def test_resume_errors(toy: EncodedDataset, universal, lookup, tmp_path: Path) -> None:
    cfg = LookalikeConfig(m=M, h=8, k=3)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_lookalike(toy, cfg, universal, lookup, tmp_path, FAST, resume=True)
    train_lookalike(toy, cfg, universal, lookup, tmp_path, FAST.model_copy(update={"epochs": 1}))
    with pytest.raises(CheckpointError, match="another model config"):
        train_lookalike(
            toy, cfg.model_copy(update={"k": 4}), universal, lookup, tmp_path, FAST, True
        )
    (tmp_path / "train_state" / "state.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupted"):
        train_lookalike(toy, cfg, universal, lookup, tmp_path, FAST, resume=True)
    with pytest.raises(ConfigError, match="n_users"):
        train_lookalike(toy, cfg, universal[:5], lookup)


def test_cached_targets_equal_per_batch_calls(toy: EncodedDataset, universal) -> None:
    from ralm.lookalike.samples import click_keys
    from ralm.lookalike.targets import TargetEmbeddings

    def target(users: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        return universal[users] + 0.01 * (np.asarray(exclude)[:, None] + 1)  # depends on it

    seeds = seed_sets(toy)
    u, i, y = training_examples(toy, seeds, 3, "uniform", np.random.default_rng(0))
    cached = TargetEmbeddings(universal, target, toy.n_items, click_keys(toy))
    direct = TargetEmbeddings(universal, target, toy.n_items, None)
    np.testing.assert_allclose(cached(u, i, y), direct(u, i, y), atol=1e-6)
    np.testing.assert_array_equal(cached(u, i, y)[y == 0], universal[u[y == 0]])


def test_resume_accepts_config_saved_before_new_fields(
    toy: EncodedDataset, universal, lookup, tmp_path: Path
) -> None:
    import json

    cfg = LookalikeConfig(m=M, h=8, k=3)
    train_lookalike(toy, cfg, universal, lookup, tmp_path, FAST.model_copy(update={"epochs": 1}))
    meta = json.loads((tmp_path / "config.json").read_text())
    del meta["model"]["kmeans_backend"]  # an older run: the field did not exist yet
    (tmp_path / "config.json").write_text(json.dumps(meta))
    res = train_lookalike(toy, cfg, universal, lookup, tmp_path, FAST, resume=True)
    assert [r["epoch"] for r in res.history] == [0, 1]


def test_overwritten_bytes_in_lookalike_weights_are_refused(
    toy: EncodedDataset, universal, lookup, tmp_path: Path
) -> None:
    from ralm.lookalike.checkpoint import load_lookalike_model

    cfg = LookalikeConfig(m=M, h=8, k=3)
    train_lookalike(toy, cfg, universal, lookup, tmp_path, FAST.model_copy(update={"epochs": 1}))
    load_lookalike_model(tmp_path)
    path = tmp_path / "model.safetensors"
    blob = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(blob[:8], "little")  # tensor data after the JSON header
    n = min(1000, len(blob) - start)
    blob[start : start + n] = (bytes(range(256)) * 4)[:n]
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*sha256"):
        load_lookalike_model(tmp_path)


def test_lookalike_non_finite_loss_keeps_the_good_checkpoint(
    toy: EncodedDataset, universal, lookup, tmp_path: Path
) -> None:
    from ralm.errors import RalmError

    cfg = LookalikeConfig(m=M, h=8, k=3)
    train_lookalike(toy, cfg, universal, lookup, tmp_path, FAST.model_copy(update={"epochs": 1}))
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}

    def nan_target(users: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        return np.full((users.size, M), np.nan, dtype=np.float32)

    with pytest.raises(RalmError, match=r"stage 2: .*nan at epoch 2/2, step 1/"):
        train_lookalike(toy, cfg, universal, nan_target, tmp_path, FAST, resume=True)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    assert all(p.read_bytes() == before[p] for p in files)


def test_steps_per_epoch_and_max_train_examples_cap_each_epoch(
    toy: EncodedDataset, universal, lookup
) -> None:
    cfg = LookalikeConfig(m=M, h=8, k=3)
    steps = train_lookalike(
        toy, cfg, universal, lookup, train_cfg=FAST.model_copy(update={"steps_per_epoch": 2})
    )
    assert [r["steps"] for r in steps.history] == [2, 2]
    capped = FAST.model_copy(update={"max_train_examples": 300, "batch_size": 64})
    res = train_lookalike(toy, cfg, universal, lookup, train_cfg=capped)
    assert [r["steps"] for r in res.history] == [5, 5]  # ceil(300 / 64)
    full = train_lookalike(toy, cfg, universal, lookup, train_cfg=FAST)
    n = full.history[0]["steps"]
    assert n > 2 and n == -(-len(training_examples(
        toy, seed_sets(toy), FAST.neg_ratio, FAST.neg_sampling, np.random.default_rng([0, 0])
    )[0]) // FAST.batch_size)  # fmt: skip


def test_ranking_recall_matches_a_naive_loop(toy: EncodedDataset, universal) -> None:
    from ralm.lookalike.validation import build_ranking_set, ranking_recall

    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=M, h=8, k=3)).eval()
    seeds = seed_sets(toy)
    index = build_seed_index(model, universal, (seeds.offsets, seeds.users))
    rs = build_ranking_set(toy, seeds, max_users=50, seed=0)
    assert rs is not None and rs.users.size == 50
    k = 5
    got = ranking_recall(model, index, universal, rs, k, batch_size=7)
    it = toy.interactions
    pos = np.asarray(it.label) > 0
    train = {(u, i) for u, i in zip(it.user[pos & (it.split == int(Split.TRAIN))].tolist(),
                                     it.item[pos & (it.split == int(Split.TRAIN))].tolist(),
                                     strict=True)}  # fmt: skip
    with torch.no_grad():
        e = model.transform(torch.from_numpy(universal))
        full = model.score(e, **index.tensors()).numpy()  # (n_users, I)
    ref = []
    for u in rs.users.tolist():
        valid = {i for uu, i, s, p in zip(it.user.tolist(), it.item.tolist(), it.split.tolist(),
                                          pos.tolist(), strict=True)
                 if uu == u and p and s == int(Split.VALID) and seeds.counts[i] > 0
                 and (u, i) not in train}  # fmt: skip
        cand = [i for i in range(toy.n_items) if seeds.counts[i] > 0 and (u, i) not in train]
        top = sorted(cand, key=lambda i: -full[u, i])[:k]
        ref.append(len(valid & set(top)) / len(valid))
    assert got == pytest.approx(float(np.mean(ref)), abs=1e-9)


def test_monitor_recall_selects_on_ranking(toy: EncodedDataset, universal, lookup) -> None:
    cfg = LookalikeConfig(m=M, h=8, k=3)
    tc = FAST.model_copy(update={"monitor": "recall", "epochs": 3, "eval_k": 5})
    res = train_lookalike(toy, cfg, universal, lookup, train_cfg=tc)
    recalls = [r["recall"] for r in res.history]
    assert res.best_epoch == int(np.argmax(recalls)) and 0 < max(recalls) <= 1
    assert all("val_auc" in r for r in res.history)
