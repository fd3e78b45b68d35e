"""Training / evaluation forms of re-clustering on Ray: one Ray task per item range.

:func:`ray_index_items` and :func:`ray_cluster_for_model` are drop-in forms of
:func:`ralm.lookalike.index_builder.index_items` / ``cluster_for_model`` (training's
between-epoch clustering); the seed embeddings, the item -> seed CSR and the warm start are
``ray.put`` once and every task slices its item range out of the object store (zero-copy
numpy).

Equality with the single process: with either k-means backend (faiss, torch) every item's
k-means seed comes from (seed, item id) (``index_items``) or (seed, item position)
(``cluster_for_model``), so any chunking gives the same arrays; the "average" variant is
chunk-independent too.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ralm.distributed.ray_runtime import (
    DEFAULT_ITEMS_PER_TASK,
    RAY_FAULT_ENV,
    ModelSpec,
    ensure_ray,
    fetch,
    gather,
    inject_fault,
    ray_module,
    remote,
    task_options,
)
from ralm.lookalike.clustering import SeedClusters
from ralm.lookalike.index_builder import Prev, cluster_for_model, index_items
from ralm.lookalike.index_table import IndexUpdate, SeedIndex
from ralm.lookalike.model import LookalikeModel


def _index_chunk(
    shared: list[Any], lo: int, hi: int, prev: list[Any] | None, kw: dict[str, Any],
    fault: str | None, key: str,
) -> IndexUpdate:  # fmt: skip
    """One training chunk: ``index_items`` over items ``lo:hi`` of the shared arrays."""
    inject_fault(fault, key)
    model, seeds, offsets, rows, ids = (fetch(r) for r in shared)
    torch.set_num_threads(1)
    o = np.asarray(offsets[lo : hi + 1], dtype=np.int64)
    csr = (o - o[0], np.asarray(rows[o[0] : o[-1]], dtype=np.int64))  # rows of the shared seeds
    p = None if prev is None else fetch(prev[0])
    if p is not None and not isinstance(p, SeedIndex | IndexUpdate):  # positional
        p = _positional(p, lo, hi)
    return index_items(model, seeds, csr, p, item_ids=ids[lo:hi], **kw)


def _cluster_chunk(
    shared: list[Any], lo: int, hi: int, init: list[Any] | None, k: int | None, seed: int,
    fault: str | None, key: str,
) -> SeedClusters:  # fmt: skip
    """One between-epoch chunk: ``cluster_for_model`` over items ``lo:hi`` (item i keeps
    its k-means seed ``seed + i``)."""
    inject_fault(fault, key)
    model, emb, offsets = (fetch(r) for r in shared)
    torch.set_num_threads(1)
    o = np.asarray(offsets[lo : hi + 1], dtype=np.int64)
    x = emb[o[0] : o[-1]]  # (S_chunk, h)
    start = None if init is None else _positional(fetch(init[0]), lo, hi)
    seeds_of = seed + np.arange(lo, hi, dtype=np.int64)
    return cluster_for_model(model, x, o - o[0], k, start, seed, item_seeds=seeds_of)


def _positional(p: Any, lo: int, hi: int) -> Any:
    if isinstance(p, SeedClusters):
        return SeedClusters(
            p.centroids[lo:hi], p.mask[lo:hi], p.sizes[lo:hi], np.zeros(0, dtype=np.int64)
        )
    return np.asarray(p)[lo:hi]


def _ranges(n_items: int, items_per_task: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + items_per_task, n_items)) for lo in range(0, n_items, items_per_task)]


def ray_index_items(
    model: LookalikeModel,
    seeds: np.ndarray,
    csr: tuple[np.ndarray, np.ndarray],
    prev: Prev = None,
    *,
    item_ids: Sequence[str] | np.ndarray | None = None,
    transformed: bool = False,
    k: int | None = None,
    seed: int = 0,
    min_seeds: int = 1,
    clustered_at: float | None = None,
    items_per_task: int = DEFAULT_ITEMS_PER_TASK,
    max_retries: int = 2,
    timeout_s: float | None = None,
) -> IndexUpdate:
    """:func:`ralm.lookalike.index_builder.index_items` with one Ray task per item range.

    The arguments are ``index_items``'s (same meaning, same result with either k-means
    backend or the "average" variant), plus ``items_per_task``, ``max_retries`` and ``timeout_s``.
    ``seeds``, the CSR, the ids and ``prev`` are put in the object store once.
    """
    ray = ray_module()
    ensure_ray()
    offsets, rows = (np.asarray(a, dtype=np.int64) for a in csr)
    n_items = offsets.size - 1
    ids = np.asarray(
        [str(i) for i in range(n_items)] if item_ids is None else list(item_ids), dtype=str
    )
    if ids.size != n_items:
        raise ValueError(f"{ids.size} item ids for {n_items} items")
    shared = [ray.put(ModelSpec.of(model)), ray.put(np.ascontiguousarray(seeds)),
              ray.put(offsets), ray.put(rows), ray.put(ids)]  # fmt: skip
    prev_ref = None if prev is None else [ray.put(prev)]
    kw = {"transformed": transformed, "k": k, "seed": seed, "min_seeds": min_seeds,
          "clustered_at": time.time() if clustered_at is None else float(clustered_at)}  # fmt: skip
    fault, token = os.environ.get(RAY_FAULT_ENV), uuid.uuid4().hex
    task = remote(_index_chunk).options(**task_options(max_retries))
    pending = [
        task.remote(shared, lo, hi, prev_ref, kw, fault, f"{token}-{lo}")
        for lo, hi in _ranges(n_items, items_per_task)
    ]
    if not pending:
        return index_items(model, seeds, csr, prev, item_ids=ids, **kw)  # type: ignore[arg-type]
    parts = gather(pending, timeout_s, f"indexing {n_items} items")
    return IndexUpdate.concat(parts)


def ray_cluster_for_model(
    model: LookalikeModel,
    seed_emb: np.ndarray,
    item_offsets: np.ndarray,
    k: int | None = None,
    init: SeedIndex | SeedClusters | np.ndarray | None = None,
    seed: int = 0,
    *,
    items_per_task: int = DEFAULT_ITEMS_PER_TASK,
    max_retries: int = 2,
    timeout_s: float | None = None,
) -> SeedClusters:
    """:func:`ralm.lookalike.index_builder.cluster_for_model` (training's between-epoch
    clustering) with one Ray task per item range; equal to it with either backend.

    ``seed_emb`` (S, h) transformed seeds, the offsets and the warm start are put in the
    object store once; each task clusters its items' rows.
    """
    ray = ray_module()
    ensure_ray()
    offsets = np.asarray(item_offsets, dtype=np.int64)
    n_items = offsets.size - 1
    kk = model.config.k if k is None else k
    start: SeedClusters | np.ndarray | None
    if isinstance(init, SeedIndex):  # positional, as cluster_for_model reads it
        start = (
            SeedClusters(init.centroids, init.mask, init.sizes, np.zeros(0, dtype=np.int64))
            if init.k == kk
            else None
        )
    else:
        start = init
    shared = [ray.put(ModelSpec.of(model)), ray.put(np.ascontiguousarray(seed_emb)),
              ray.put(offsets)]  # fmt: skip
    init_ref = None if start is None else [ray.put(start)]
    fault, token = os.environ.get(RAY_FAULT_ENV), uuid.uuid4().hex
    task = remote(_cluster_chunk).options(**task_options(max_retries))
    t0 = time.perf_counter()
    pending = [
        task.remote(shared, lo, hi, init_ref, k, seed, fault, f"{token}-{lo}")
        for lo, hi in _ranges(n_items, items_per_task)
    ]
    if not pending:
        return cluster_for_model(model, seed_emb, offsets, k, init, seed)
    parts: list[SeedClusters] = gather(pending, timeout_s, f"clustering {n_items} items")
    out = SeedClusters(
        centroids=np.concatenate([p.centroids for p in parts]),
        mask=np.concatenate([p.mask for p in parts]),
        sizes=np.concatenate([p.sizes for p in parts]),
        assign=np.concatenate([p.assign for p in parts]),
        inertia=sum(p.inertia for p in parts),
    )
    return replace(out, seconds=time.perf_counter() - t0)
