"""The serving path (store -> re-clustering job) builds the same index as training's path.

Both call stage 2's one builder; this test guards against the copy drifting again (it did:
the service re-clustered with faiss a model configured for the torch backend).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ralm.data.toy import make_toy_dataset
from ralm.lookalike.config import LookalikeConfig
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.samples import seed_sets
from ralm.lookalike.seed_index import SeedIndex, build_seed_index
from ralm.serve.config import ServeConfig
from ralm.serve.index_holder import IndexHolder
from ralm.serve.recluster import Reclusterer
from ralm.serve.runtime import ServingModel, TableEmbedder
from ralm.serve.store import SeedStore

M = 12


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_serving_index_equals_training_index(backend: str, tmp_path: Path) -> None:
    ds = make_toy_dataset(n_users=300, n_items=40, clicks_per_user=12, seed=1)
    seeds = seed_sets(ds)
    rng = np.random.default_rng(0)
    universal = rng.normal(size=(ds.n_users, M)).astype(np.float32)  # (U, m)
    torch.manual_seed(0)
    model = LookalikeModel(LookalikeConfig(m=M, h=8, k=3, kmeans_backend=backend)).eval()
    item_ids = np.asarray([f"item{i:04d}" for i in range(ds.n_items)])  # store order = ours
    user_ids = np.asarray([f"u{j}" for j in range(ds.n_users)])

    trained = build_seed_index(
        model, universal, (seeds.offsets, seeds.users), item_ids=item_ids, seed=7
    )

    store = SeedStore(tmp_path / "seeds.sqlite3")
    clicks = [  # most recent first = training's seed order
        (str(user_ids[u]), str(item_ids[i]), 1000.0 - j)
        for i in range(ds.n_items)
        for j, u in enumerate(seeds.users[seeds.offsets[i] : seeds.offsets[i + 1]])
    ]
    store.bulk_import(clicks)
    serving = ServingModel(scorer=model, embedder=TableEmbedder(user_ids, universal))
    cfg = ServeConfig(state_dir=tmp_path, min_seeds=1, fast_path=False, seed=7)
    holder = IndexHolder(SeedIndex.empty(serving.k, serving.h))
    rep = Reclusterer(store, holder, serving, cfg).run_full()
    store.close()
    served = holder.current()

    has = np.flatnonzero(np.diff(seeds.offsets) > 0)
    assert rep.n_items == has.size == served.n_items and has.size < ds.n_items
    rows = np.asarray([served.row_of[str(item_ids[i])] for i in has])
    got = served.gather(rows)
    for name in ("centroids", "mask", "sizes", "global_vec", "gram", "n_seeds"):
        np.testing.assert_array_equal(got[name], getattr(trained, name)[has], err_msg=name)
    assert got["servable"].all() and trained.servable[has].all()
    assert not trained.servable[np.diff(seeds.offsets) == 0].any()


class _CountingStore:
    """A SQLite store with a batch read, counting how the job reads seeds."""

    def __init__(self, inner: SeedStore) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def seeds(self, item_id: str, limit: int | None = None) -> list[str]:
        self.calls.append("seeds")
        return self.inner.seeds(item_id, limit)

    def seeds_many(self, item_ids: list[str], limit: int | None = None) -> dict[str, list[str]]:
        self.calls.append(f"seeds_many:{len(item_ids)}")
        return {i: self.inner.seeds(i, limit) for i in item_ids}


def test_the_job_reads_seeds_with_one_batch_call(tmp_path: Path) -> None:
    from .conftest import background_clicks
    from .planted import planted_model

    inner = SeedStore(tmp_path / "seeds.sqlite3")
    store = _CountingStore(inner)
    inner.add_clicks(background_clicks())
    model = planted_model()
    holder = IndexHolder(SeedIndex.empty(model.k, model.h))
    cfg = ServeConfig(state_dir=tmp_path, min_seeds=1)
    job = Reclusterer(store, holder, model, cfg)  # type: ignore[arg-type]
    assert job.run_full().n_items == 15
    assert store.calls == ["seeds_many:15"]
    inner.close()
