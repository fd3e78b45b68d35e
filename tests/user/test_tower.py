"""Feature embedding, attention merge and user tower behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ralm.data.batching import UserBatch, gather_users
from ralm.data.encoded import EncodedDataset, FieldInfo
from ralm.errors import ConfigError
from ralm.user.attention_merge import AttentionMerge
from ralm.user.tower import UserTower

from .helpers import tiny_config


def _batch(history: list[list[int]], hint: list[int], age: list[float]) -> UserBatch:
    lengths = [len(h) for h in history]
    values = torch.tensor([v for h in history for v in h], dtype=torch.long)
    offsets = torch.tensor(np.r_[0, np.cumsum(lengths)[:-1]], dtype=torch.long)
    return UserBatch(
        univalent={"group_hint": torch.tensor(hint)},
        multivalent={"history": (values, offsets)},
        continuous=torch.tensor(age, dtype=torch.float32)[:, None],
    )


def test_shapes_and_attention_sums_to_one(toy: EncodedDataset) -> None:
    torch.manual_seed(0)
    tower = UserTower(toy.fields, tiny_config())
    batch = gather_users(toy, np.arange(20))
    assert tower(batch).shape == (20, 16)
    alpha = tower.field_attention(batch)
    assert alpha.shape == (20, 3) and tower.field_names == ["group_hint", "history", "continuous"]
    torch.testing.assert_close(alpha.sum(1), torch.ones(20))
    assert (alpha > 0).all()


def test_attention_merge_matches_equations() -> None:
    torch.manual_seed(1)
    merge = AttentionMerge(dim=4, units=3)
    h = torch.randn(2, 5, 4)  # (B, n, m)
    w1, w2 = merge.w1.weight.T, merge.w2  # (m, a), (a,)
    ref_alpha = torch.stack([torch.softmax(torch.tanh(h[b] @ w1) @ w2, 0) for b in range(2)])
    ref_m = torch.stack([ref_alpha[b] @ h[b] for b in range(2)])
    torch.testing.assert_close(merge.weights(h), ref_alpha)
    torch.testing.assert_close(merge(h), ref_m)


def test_embedding_invariant_to_order_inside_bag(toy: EncodedDataset) -> None:
    torch.manual_seed(0)
    tower = UserTower(toy.fields, tiny_config())
    a = tower(_batch([[3, 9, 17, 4], [5]], [1, 0], [0.2, 0.9]))
    b = tower(_batch([[17, 4, 3, 9], [5]], [1, 0], [0.2, 0.9]))
    torch.testing.assert_close(a, b)


def test_empty_bag_gives_defined_vector(toy: EncodedDataset) -> None:
    torch.manual_seed(0)
    tower = UserTower(toy.fields, tiny_config())
    batch = _batch([[], [2, 3], []], [0, 1, 2], [0.0, 0.5, 1.0])
    h = tower.embedding(batch)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h[0, 1], torch.zeros(16))  # empty multivalent field -> zeros
    out = tower(batch)
    out.sum().backward()
    assert torch.isfinite(out).all()
    grads = [p.grad for p in tower.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g.to_dense()).all() for g in grads)


def test_oov_code_is_a_learned_row(toy: EncodedDataset) -> None:
    torch.manual_seed(0)
    tower = UserTower(toy.fields, tiny_config())
    tower(_batch([[1]], [0], [0.5])).sum().backward()
    grad = tower.embedding.tables[0].weight.grad  # group_hint table
    assert grad is not None and grad.to_dense()[0].abs().sum() > 0  # OOV row 0: trained


def test_concat_merge_and_its_attention_error(toy: EncodedDataset) -> None:
    tower = UserTower(toy.fields, tiny_config(merge="concat"))
    batch = gather_users(toy, np.arange(5))
    assert tower(batch).shape == (5, 16)
    with pytest.raises(ConfigError, match="concat"):
        tower.field_attention(batch)


def test_no_fields_or_bad_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no user feature"):
        UserTower([], tiny_config())
    with pytest.raises(ConfigError, match="kind"):
        UserTower([FieldInfo("x", "weird")], tiny_config())


def test_config_rejects_bad_values() -> None:
    from pydantic import ValidationError

    from ralm.user.config import UserModelConfig, UserTrainConfig

    for bad in ({"mlp_hidden": [0]}, {"dim": 0}, {"merge": "sum"}, {"unknown": 1}, {"epochs": 3}):
        with pytest.raises(ValidationError):
            UserModelConfig(**bad)  # type: ignore[arg-type]
    assert UserModelConfig().dim == 128 and UserTrainConfig().n_negatives == 10


def test_excluded_fields_are_ignored(toy: EncodedDataset) -> None:
    torch.manual_seed(0)
    tower = UserTower(toy.fields, tiny_config(exclude_fields=["history"]))
    assert tower.field_names == ["group_hint", "continuous"]
    a = tower(_batch([[3, 9], []], [1, 2], [0.2, 0.9]))
    b = tower(_batch([[5], [1, 2, 3]], [1, 2], [0.2, 0.9]))  # only the history differs
    torch.testing.assert_close(a, b)
    no_cont = UserTower(toy.fields, tiny_config(exclude_fields=["age"]))
    assert no_cont.field_names == ["group_hint", "history"]
    with pytest.raises(ConfigError, match="nope"):
        UserTower(toy.fields, tiny_config(exclude_fields=["nope"]))
    with pytest.raises(ConfigError, match="no user feature"):
        UserTower(toy.fields, tiny_config(exclude_fields=["age", "history", "group_hint"]))


def test_sparse_gradients_auto_by_table_size(toy: EncodedDataset) -> None:
    from ralm.user.config import SPARSE_AUTO_ROWS
    from ralm.user.tower import UserItemModel

    cfg = tiny_config()
    assert cfg.sparse_grad is None
    assert not cfg.use_sparse(SPARSE_AUTO_ROWS - 1) and cfg.use_sparse(SPARSE_AUTO_ROWS)
    assert not UserItemModel(toy.fields, toy.n_items, cfg).item_embedding.sparse
    big = UserItemModel(toy.fields, SPARSE_AUTO_ROWS, cfg)
    assert big.item_embedding.sparse and big.tower.embedding.tables[1].sparse
    forced = UserItemModel(toy.fields, toy.n_items, tiny_config(sparse_grad=True))
    assert forced.item_embedding.sparse


def test_bag_mean_matmul_equals_embedding_bag_values_and_gradients() -> None:
    from ralm.user.feature_embedding import bag_mean_matmul

    g = torch.Generator().manual_seed(0)
    bag = torch.nn.EmbeddingBag(11, 4, mode="mean")
    values = torch.tensor([3, 3, 0, 10, 5, 1, 2, 7, 7, 7])  # repeats and code 0 (OOV row)
    offsets = torch.tensor([0, 3, 3, 4, 9])  # bag 1 is empty
    w = torch.randn(11, 4, generator=g)
    with torch.no_grad():
        bag.weight.copy_(w)
    ref = bag(values, offsets)
    ref.pow(2).sum().backward()
    w2 = w.clone().requires_grad_(True)
    out = bag_mean_matmul(w2, values, offsets)
    out.pow(2).sum().backward()
    torch.testing.assert_close(out, ref)
    assert torch.all(out[1] == 0)  # empty bag -> zeros
    torch.testing.assert_close(w2.grad, bag.weight.grad)


def test_attention_concat_merge_is_concat_gated_by_field_attention() -> None:
    """``attention_concat``: field i scaled by n * alpha_i, then concatenated; with a uniform
    attention it is exactly the concat merge, and its alpha is the attention merge's."""
    from ralm.user.attention_merge import AttentionConcatMerge, AttentionMerge, ConcatMerge

    torch.manual_seed(0)
    h = torch.randn(4, 3, 5)  # (B, n, m)
    gated = AttentionConcatMerge(5, 7, 3)
    plain = AttentionMerge(5, 7)
    plain.load_state_dict(gated.state_dict())
    alpha = plain.weights(h)  # (B, n), the paper's field attention
    expect = torch.cat([3 * alpha[:, i : i + 1] * h[:, i] for i in range(3)], dim=1)
    assert torch.allclose(gated(h), expect, atol=1e-6)
    assert gated.out_dim == 15 and gated(h).shape == (4, 15)
    with torch.no_grad():
        gated.w2.zero_()  # uniform attention
    assert torch.allclose(gated(h), ConcatMerge(5, 3)(h), atol=1e-6)


def test_attention_concat_tower_has_field_attention(toy: EncodedDataset) -> None:
    tower = UserTower(toy.fields, tiny_config(merge="attention_concat"))
    batch = gather_users(toy, np.arange(5))
    assert tower(batch).shape == (5, 16)
    alpha = tower.field_attention(batch)
    assert alpha.shape == (5, tower.embedding.n_fields)
    assert torch.allclose(alpha.sum(1), torch.ones(5), atol=1e-6)
