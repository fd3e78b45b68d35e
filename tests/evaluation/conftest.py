"""Shared fixtures of the evaluation tests."""

from __future__ import annotations

import os

import pytest

from ralm.data.encoded import EncodedDataset
from ralm.data.toy import make_toy_dataset

os.environ.setdefault("RALM_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def toy() -> EncodedDataset:
    """A planted toy dataset with more clicks per user than the default (sharper groups)."""
    return make_toy_dataset(n_users=300, n_items=60, clicks_per_user=16, seed=0)
