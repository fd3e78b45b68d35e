"""Permutation invariance and masking of the attention terms."""

from __future__ import annotations

import numpy as np
import torch

from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel


def _model(k: int = 5, h: int = 8) -> LookalikeModel:
    torch.manual_seed(3)
    return LookalikeModel(LookalikeConfig(m=h, h=h, k=k))


def test_global_attention_is_permutation_invariant() -> None:
    model = _model()
    cent = torch.randn(4, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1], [0] * 5]).bool()
    n = torch.randint(1, 9, (4, 5)) * mask
    with torch.no_grad():
        g = model.item_global(cent, mask, n)
        for seed in range(5):
            perm = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
            g_p = model.item_global(cent[:, perm], mask[:, perm], n[:, perm])
            torch.testing.assert_close(g_p, g, atol=1e-6, rtol=1e-6)
    assert torch.all(g[3] == 0)  # no valid centroid -> zero vector
    # and it is not a trivial mean: weights depend on content
    w = model.global_attention.weights(cent[:1], mask[:1])  # no size prior
    assert not torch.allclose(w, torch.full_like(w, 0.2))


def test_full_score_is_invariant_to_centroid_reordering() -> None:
    model = _model()
    e_u = torch.relu(torch.randn(6, 8))
    cent = torch.relu(torch.randn(3, 5, 8))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 0, 1, 1]]).bool()
    n = torch.randint(1, 9, (3, 5)) * mask
    with torch.no_grad():
        s = model.score(e_u, cent, mask, model.item_global(cent, mask, n), sizes=n)
        perm = torch.tensor([4, 2, 0, 3, 1])
        c_p, m_p, n_p = cent[:, perm], mask[:, perm], n[:, perm]
        s_p = model.score(e_u, c_p, m_p, model.item_global(c_p, m_p, n_p), sizes=n_p)
    torch.testing.assert_close(s_p, s, atol=1e-6, rtol=1e-6)


def test_item_with_fewer_seeds_than_k_scores_like_unpadded_reference() -> None:
    """An item with 2 seeds padded to k=5 (garbage in padding) == the same item with k=2."""
    model = _model(k=5)
    e_u = torch.relu(torch.randn(4, 8))
    seeds = torch.relu(torch.randn(1, 2, 8))
    padded = torch.cat([seeds, 100 * torch.randn(1, 3, 8)], dim=1)  # (1, 5, 8)
    mask = torch.tensor([[1, 1, 0, 0, 0]]).bool()
    n = mask.long()  # padded slots have size 0
    with torch.no_grad():
        s_pad = model.score(e_u, padded, mask, model.item_global(padded, mask, n), sizes=n)
        m2, n2 = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.long)
        s_ref = model.score(e_u, seeds, m2, model.item_global(seeds, m2, n2), sizes=n2)
    np.testing.assert_allclose(s_pad.numpy(), s_ref.numpy(), atol=1e-6)


def test_average_variant_is_cosine_to_mean_seed() -> None:
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=8, h=8, variant="average", seed_prior=False))
    e_u = torch.relu(torch.randn(3, 8))
    mean = torch.relu(torch.randn(4, 1, 8))
    mask = torch.ones(4, 1, dtype=torch.bool)
    n = torch.tensor([[3], [1], [7], [2]])
    with torch.no_grad():
        s = model.score(e_u, mean, mask, model.item_global(mean, mask, n), sizes=n)
    cos = torch.nn.functional.cosine_similarity(e_u[:, None, :], mean[None, :, 0, :], dim=-1)
    torch.testing.assert_close(s, (0.3 + 0.7) * cos, atol=1e-6, rtol=1e-6)
