"""Shared fixtures: the toy dataset and planted, group-structured universal embeddings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from ralm.data.encoded import EncodedDataset
from ralm.data.toy import make_toy_dataset

M = 12

# tiny tensors: one intra-op thread avoids spin-waiting on a shared 2-core machine
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy() -> EncodedDataset:
    return make_toy_dataset(n_users=300, n_items=40, clicks_per_user=12, seed=1)


@pytest.fixture(scope="module")
def universal(toy: EncodedDataset) -> np.ndarray:
    """(n_users, M) vectors: the user's latent group centre plus noise."""
    group = np.asarray(toy.extra["toy"]["group"])
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(int(group.max()) + 1, M))
    return (centres[group] + 0.7 * rng.normal(size=(toy.n_users, M))).astype(np.float32)


@pytest.fixture()
def lookup(universal: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def target_universal(users: np.ndarray, exclude_items: np.ndarray) -> np.ndarray:
        return universal[users]

    return target_universal
