"""Issue 13 options: learned alpha/beta, the capped prior, end-to-end fine-tuning of stage 1."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset
from ralm.errors import ConfigError
from ralm.lookalike.config import LookalikeConfig, LookalikeTrainConfig
from ralm.lookalike.finetune import TowerEncoder
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.train import train_lookalike
from ralm.user.config import UserModelConfig, UserTrainConfig
from ralm.user.embed import embed_users
from ralm.user.train import train_user_model

M = 12


def _items(n_items: int = 5, k: int = 3, h: int = 8) -> tuple[torch.Tensor, ...]:
    cent, mask = torch.randn(n_items, k, h).abs(), torch.ones(n_items, k, dtype=torch.bool)
    mask[0, 2] = False
    sizes = torch.randint(1, 40, (n_items, k)) * mask
    return cent, mask, sizes


def test_learned_mix_equals_fixed_weights_and_learns() -> None:
    """``learn_weights``: at init the score is the fixed alpha/beta score; after moving the
    mix, every scoring path equals the fixed-weight model with the learned (alpha', beta')."""
    torch.manual_seed(0)
    fixed = LookalikeModel(LookalikeConfig(m=M, h=8, k=3))
    learned = LookalikeModel(fixed.config.model_copy(update={"learn_weights": True}))
    learned.load_state_dict({**fixed.state_dict(), "mix_logit": learned.mix_logit.detach()})
    cent, mask, sizes = _items()
    e_u = fixed.transform(torch.randn(4, M))
    gv = fixed.item_global(cent, mask, sizes)
    with torch.no_grad():
        torch.testing.assert_close(
            learned.score(e_u, cent, mask, gv, sizes=sizes),
            fixed.score(e_u, cent, mask, gv, sizes=sizes),
        )
    assert learned.alpha_beta == pytest.approx((0.3, 0.7))
    s = learned.score_train(e_u.detach(), cent, mask, gv.detach(), sizes=sizes)
    s[:, 1].sum().backward()
    assert learned.mix_logit.grad is not None and float(learned.mix_logit.grad.abs()) > 0
    with torch.no_grad():
        learned.mix_logit.fill_(1.5)
    a, b = learned.alpha_beta
    assert a + b == pytest.approx(1.0) and a == pytest.approx(1 / (1 + np.exp(-1.5)), rel=1e-6)
    ref = LookalikeModel(fixed.config.model_copy(update={"alpha": a, "beta": b}))
    ref.load_state_dict(fixed.state_dict())
    with torch.no_grad():
        want = ref.score(e_u, cent, mask, gv, sizes=sizes)  # (4, 5)
        torch.testing.assert_close(learned.score(e_u, cent, mask, gv, sizes=sizes), want)
        torch.testing.assert_close(
            learned.score_train(e_u, cent, mask, gv, sizes=sizes), want, atol=1e-5, rtol=1e-5
        )
        pairs = learned.score_pairs(e_u[:1].expand(5, -1), cent, mask, gv, sizes=sizes)
        torch.testing.assert_close(pairs, want[0], atol=1e-5, rtol=1e-5)


def test_prior_cap_flattens_the_log_count_prior() -> None:
    torch.manual_seed(0)
    base = LookalikeModel(LookalikeConfig(m=M, h=8, k=3))
    capped = LookalikeModel(base.config.model_copy(update={"prior_cap": 45.0}))
    capped.load_state_dict(base.state_dict())
    cent, mask, sizes = _items()
    e_u = base.transform(torch.randn(4, M))
    n = sizes.sum(1).float()
    with torch.no_grad():
        gv = base.item_global(cent, mask, sizes)
        got = capped.score(e_u, cent, mask, gv, sizes=sizes)
        want = base.score(e_u, cent, mask, gv, sizes=sizes) + base.gamma * (
            torch.log1p(n.clamp(max=45.0)) - torch.log1p(n)
        )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert bool((n > 45).any()) and bool((n <= 45).any())  # both sides of the cap are tested


@pytest.fixture(scope="module")
def tower(toy: EncodedDataset):  # type: ignore[no-untyped-def]
    cfg = UserModelConfig(dim=M, attention_units=8, mlp_hidden=[16])
    return train_user_model(toy, cfg, train_cfg=UserTrainConfig(epochs=1, batch_size=128, seed=0))


FT = LookalikeTrainConfig(
    epochs=2, batch_size=64, lr=0.01, patience=5, seed=0, finetune_user=True, finetune_lr_mult=1.0
)


def test_finetune_trains_the_tower_and_indexes_its_embeddings(toy: EncodedDataset, tower) -> None:  # type: ignore[no-untyped-def]
    """The tower moves, the original is untouched, and the returned index is the one the
    tuned tower's embeddings give (the seeds are recomputed from the tuned tower)."""
    universal = embed_users(tower, toy)
    before = {k: v.clone() for k, v in tower.tower.state_dict().items()}
    enc = TowerEncoder(copy.deepcopy(tower.tower), toy)
    np.testing.assert_allclose(enc.embed_all(), universal, rtol=1e-5, atol=1e-6)
    excl = np.where(np.arange(10) % 2 == 0, 3, -1)
    np.testing.assert_allclose(
        enc.embed(np.arange(10), excl), embed_users(tower, toy, np.arange(10), excl), atol=1e-6
    )

    def target(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return embed_users(tower, toy, users, items)

    cfg = LookalikeConfig(m=M, h=8, k=3)
    res = train_lookalike(toy, cfg, universal, target, train_cfg=FT, user_encoder=enc)
    for k, v in tower.tower.state_dict().items():  # the caller's tower is not the tuned one
        torch.testing.assert_close(v, before[k])
    assert res.universal is not None
    tuned = enc.embed_all()
    np.testing.assert_allclose(res.universal, tuned, rtol=1e-5, atol=1e-6)
    assert np.abs(tuned - universal).max() > 1e-3  # the tower was trained
    # every item's size-weighted centroid mean is the mean of its seeds' transformed
    # embeddings: from the tuned tower (the untuned one gives other means)
    from ralm.lookalike.samples import seed_sets

    seeds = seed_sets(toy)
    ix = res.seed_index
    with torch.no_grad():
        for name, emb in (("tuned", tuned), ("frozen", universal)):
            t = res.model.transform(torch.from_numpy(emb)).numpy()  # (n_users, h)
            gaps = []
            for j in range(toy.n_items):
                members = seeds.users[seeds.offsets[j] : seeds.offsets[j + 1]]
                if members.size == 0:
                    continue
                n = ix.sizes[j].astype(np.float64)
                mean_c = (n[:, None] * ix.centroids[j]).sum(0) / n.sum()
                gaps.append(np.abs(mean_c - t[members].mean(0)).max())
            if name == "tuned":
                assert max(gaps) < 1e-4
            else:
                assert max(gaps) > 1e-3


def test_finetune_refuses_what_it_cannot_do(toy: EncodedDataset, tower, tmp_path) -> None:  # type: ignore[no-untyped-def]
    universal = embed_users(tower, toy)
    cfg = LookalikeConfig(m=M, h=8, k=3)

    def target(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return universal[users]

    enc = TowerEncoder(copy.deepcopy(tower.tower), toy)
    with pytest.raises(ConfigError, match="finetune_user"):
        train_lookalike(toy, cfg, universal, target, train_cfg=FT)
    with pytest.raises(ConfigError, match="finetune_user"):
        train_lookalike(toy, cfg, universal, target, tmp_path, FT, user_encoder=enc)
