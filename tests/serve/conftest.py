"""Fixtures of the serving tests: a planted model and a service over a tmp state dir."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ralm.serve.config import ServeConfig
from ralm.serve.service import RalmService
from ralm.serve.store import Click

from .planted import N_GROUPS, group_users, planted_model


def background_clicks(items_per_group: int = 5, clickers: int = 30) -> list[Click]:
    """Items ``item-g{g}-{j}`` clicked by ``clickers`` users of group g."""
    now = time.time()
    return [
        Click(u, f"item-g{g}-{j}", now)
        for g in range(N_GROUPS)
        for j in range(items_per_group)
        for u in group_users(g, clickers, start=j)
    ]


def make_service(state: Path, **cfg: object) -> RalmService:
    opts: dict[str, object] = {"state_dir": state, "recluster_every_s": 3600, "min_seeds": 5}
    opts.update(cfg)
    return RalmService(planted_model(), ServeConfig(**opts))  # type: ignore[arg-type]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[RalmService]:
    svc = make_service(tmp_path / "state")
    svc.add_clicks(background_clicks())
    svc.start()
    yield svc
    svc.close()
