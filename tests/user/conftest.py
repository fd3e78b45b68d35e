"""Shared fixtures: a small toy dataset and one tiny trained model (trained once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ralm.data.encoded import EncodedDataset
from ralm.data.toy import make_toy_dataset
from ralm.user.checkpoint import UserModel

from .helpers import train_tiny

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def toy() -> EncodedDataset:
    return make_toy_dataset(n_users=300, n_items=60, seed=0)


@pytest.fixture(scope="session")
def trained(
    toy: EncodedDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[UserModel, Path]:
    run = tmp_path_factory.mktemp("run") / "user"
    model = train_tiny(toy, run, epochs=3)
    return model, run
