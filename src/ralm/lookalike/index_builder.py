"""The ONE seed-index builder: training, evaluation and the re-clustering job call it.

:func:`index_items` is a pure function of (model, seed embeddings, item -> seed CSR,
previous centroids, seed): it transforms the seeds with the model (or takes them already
transformed), clusters them with the model's configured variant and k-means backend
(:func:`ralm.lookalike.clustering.cluster_items`), warm-started from ``prev`` by item id,
and adds the model-dependent terms (global vectors, Gram matrices). It returns an
:class:`~ralm.lookalike.seed_index.IndexUpdate` for exactly the items it was given, which
:meth:`SeedIndex.updated` applies (the re-clustering unit of work: one call per chunk of
items, e.g. one Ray task).

Every item's k-means seed is derived from ``(seed, item id)`` (both backends), so an
item's clusters do not depend on which other items share the call.

``build_seed_index``, ``cluster_for_model``, ``index_from_clusters`` and
``transform_seeds`` are the stage-2 names, thin wrappers over the same code.

The carry-over from ``prev`` (warm-start centroids, earliest first-click times) is in
:mod:`ralm.lookalike.index_carry`.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence

import numpy as np
import torch

from ralm.lookalike.clustering import SeedClusters, cluster_items
from ralm.lookalike.index_carry import Prev as Prev  # re-exported
from ralm.lookalike.index_carry import _earliest_first_seen, _first_seen_rows, _warm_start
from ralm.lookalike.index_table import CHUNK_ITEMS, IndexUpdate, SeedIndex
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.scorer import gram_matrix
from ralm.lookalike.seed_rows import TRANSFORM_BATCH, SeedRows, transform_rows

log = logging.getLogger(__name__)


def transform_seeds(
    model: LookalikeModel,
    seed_universal: np.ndarray,
    users: np.ndarray,
    batch: int = TRANSFORM_BATCH,
) -> np.ndarray:
    """Transformed embeddings of seed rows: universal (n_users, m)[users] -> (S, h) float32
    (:func:`ralm.lookalike.seed_rows.transform_rows`; :class:`~ralm.lookalike.seed_rows.SeedRows`
    writes the same bytes to disk instead)."""
    return transform_rows(model.transform_layer, seed_universal, users, model.config.h, batch)


def item_seeds(item_ids: Sequence[str] | np.ndarray, seed: int) -> np.ndarray:
    """int64 (I,) k-means seed of every item, from the run seed and the raw item id."""
    return np.asarray(
        [(seed + zlib.crc32(str(i).encode("utf-8"))) % (2**31 - 1) for i in item_ids],
        dtype=np.int64,
    )


def _cluster(
    model: LookalikeModel,
    seed_emb: np.ndarray,
    offsets: np.ndarray,
    k: int | None,
    init: np.ndarray | None,
    init_mask: np.ndarray | None,
    seed: int,
    seeds_of_items: np.ndarray | None,
    progress: bool,
) -> SeedClusters:
    cfg = model.config
    return cluster_items(
        seed_emb,
        offsets,
        cfg.k if k is None else k,
        variant=cfg.variant,
        backend=cfg.kmeans_backend,
        niter=cfg.kmeans_niter,
        warm_niter=cfg.kmeans_warm_niter,
        init=init,
        init_mask=init_mask,
        seed=seed,
        item_seeds=seeds_of_items,
        progress=progress,
        k_rule=cfg.k_rule,
        seeds_per_cluster=cfg.seeds_per_cluster,
    )


@torch.no_grad()
def _finish(
    model: LookalikeModel,
    clusters: SeedClusters,
    offsets: np.ndarray,
    item_ids: np.ndarray,
    min_seeds: int,
    clustered_at: float,
    chunk: int = 8192,
    first_seen: np.ndarray | None = None,
) -> IndexUpdate:
    """Global vectors and Gram matrices of clusters; servable and soundness flags."""
    n_items, k = clusters.n_items, clusters.k
    glob = np.zeros((n_items, model.config.h), dtype=np.float32)  # (I, h)
    gram = np.zeros((n_items, k, k), dtype=np.float32)  # (I, k, k)
    has = np.asarray(clusters.mask.any(axis=1))  # (I,) items with at least one seed
    for lo in range(0, n_items, chunk):
        sl = slice(lo, lo + chunk)
        c = torch.from_numpy(clusters.centroids[sl])  # (b, k, h)
        gram[sl] = gram_matrix(c).numpy()  # (b, k, k)
        idx = np.flatnonzero(has[sl]) + lo
        if idx.size:  # an item without seeds keeps a zero global vector (never NaN)
            # padded to a multiple of 16 items (repeating the last): MKL's GEMMs of fewer
            # than ~12 rows round differently, and an item's vector must not depend on
            # how many other items share the call (chunked or Ray builds)
            pad = np.concatenate([idx, np.full(-idx.size % 16, idx[-1])])
            cc = torch.from_numpy(clusters.centroids[pad])
            m = torch.from_numpy(clusters.mask[pad])
            n = torch.from_numpy(clusters.sizes[pad])
            glob[idx] = model.item_global(cc, m, n).float().numpy()[: idx.size]  # (b, h)
    n_seeds = np.diff(np.asarray(offsets, dtype=np.int64))
    sound = (
        np.isfinite(clusters.centroids).all(axis=(1, 2))
        & np.isfinite(glob).all(axis=1)
        & np.isfinite(gram).all(axis=(1, 2))
    )
    if not sound.all():
        log.error("%d items have non-finite clusters: they are not servable", int((~sound).sum()))
    return IndexUpdate(
        item_ids=item_ids,
        centroids=clusters.centroids,
        mask=clusters.mask,
        sizes=np.asarray(clusters.sizes, dtype=np.int64),
        global_vec=glob,
        gram=gram,
        n_seeds=n_seeds,
        servable=(n_seeds >= min_seeds) & has & sound,
        clustered_at=np.full(n_items, clustered_at, dtype=np.float64),
        first_seen=_first_seen_rows(first_seen, n_items),
        inertia=clusters.inertia,
        seconds=clusters.seconds,
    )


def _check_csr(csr: tuple[np.ndarray, np.ndarray], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    offsets, rows = (np.asarray(a, dtype=np.int64) for a in csr)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != rows.size:
        raise ValueError("item_seed_csr offsets must start at 0 and end at the number of seed rows")
    if np.any(np.diff(offsets) < 0):
        raise ValueError("item_seed_csr offsets must be non-decreasing")
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(f"seed user index out of range 0..{n_rows - 1}")
    return offsets, rows


def index_items(
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
    progress: bool = False,
    first_seen: np.ndarray | None = None,
) -> IndexUpdate:
    """Cluster and index the seeds of U items (THE builder; see the module docstring).

    Args:
        model: the stage-2 model: its transform, variant, k, k-means backend and Lloyd
            iterations (``model.config``) and its global attention.
        seeds: float32 (n, m) universal embeddings, or (n, h) transformed ones when
            ``transformed``.
        csr: ``(offsets (U + 1,), rows (S,))``: item u's seeds are
            ``seeds[rows[offsets[u]:offsets[u + 1]]]``.
        prev: previous clusters to warm-start from: a SeedIndex or IndexUpdate (matched by
            item id), or SeedClusters / (U, k, h) centroids (by position); None = cold.
        item_ids: raw ids (U,) (default "0".."U-1").
        transformed: ``seeds`` are already transformed by ``model``.
        k: clusters per item (default: the model's k).
        seed: k-means seed.
        min_seeds: items with fewer seeds are not servable.
        clustered_at: time stamp of the rows (default: now).
        progress: show a progress bar.
        first_seen: float64 (U,) time of each item's first click (0 = not known); an item
            that ``prev`` (an index or update) holds keeps the earlier of its recorded time
            and this one.
    """
    offsets, rows = _check_csr(csr, seeds.shape[0])
    n_items = offsets.size - 1
    ids = np.asarray(
        [str(i) for i in range(n_items)] if item_ids is None else list(item_ids), dtype=str
    )
    if ids.size != n_items:
        raise ValueError(f"{ids.size} item ids for {n_items} items")
    was_training = model.training
    model.eval()
    try:
        if transformed:
            emb = np.ascontiguousarray(seeds[rows], dtype=np.float32)  # (S, h)
        else:
            emb = transform_seeds(model, seeds, rows)  # (S, h)
        kk = (
            model.config.n_clusters
            if k is None
            else (1 if model.config.variant == "average" else k)
        )
        init, init_mask = _warm_start(prev, ids, kk, model.config.h)
        clusters = _cluster(
            model, emb, offsets, kk, init, init_mask, seed, item_seeds(ids, seed), progress
        )
        when = time.time() if clustered_at is None else float(clustered_at)
        first = _earliest_first_seen(prev, ids, first_seen)
        return _finish(model, clusters, offsets, ids, min_seeds, when, first_seen=first)
    finally:
        model.train(was_training)


# ---- the stage-2 names (thin wrappers) --------------------------------------------------
def cluster_for_model(
    model: LookalikeModel,
    seed_emb: np.ndarray,
    item_offsets: np.ndarray,
    k: int | None = None,
    init: SeedIndex | SeedClusters | np.ndarray | None = None,
    seed: int = 0,
    progress: bool = False,
    item_seeds: np.ndarray | None = None,
) -> SeedClusters:
    """Cluster transformed seeds the way ``model`` expects (positional warm start).

    ``item_seeds`` (I,) replaces the per-item k-means seeds ``seed + i``
    (a chunk of items ``lo:hi`` passes ``seed + lo + arange(I)`` to cluster as in one call).
    """
    kk = model.config.k if k is None else k
    if isinstance(init, SeedIndex):
        init_c, init_m = (init.centroids, init.mask) if init.k == kk else (None, None)
        if init_c is None:
            log.warning("warm start ignored: previous index has k=%d, asked k=%d", init.k, kk)
    else:
        init_c, init_m = _warm_start(init, np.zeros(0, dtype=str), kk, model.config.h)
    return _cluster(model, seed_emb, item_offsets, kk, init_c, init_m, seed, item_seeds, progress)


CLUSTER_ROWS = 1 << 18  # seed rows per chunk of :func:`cluster_rows` (128 MiB at h = 128)


def item_chunks(item_offsets: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Consecutive item ranges ``[lo, hi)`` of at most ``max_rows`` seed rows each (an item
    with more rows is a range of its own), covering every item."""
    offsets = np.asarray(item_offsets, dtype=np.int64)
    n_items, out, lo = offsets.size - 1, [], 0
    while lo < n_items:
        hi = int(np.searchsorted(offsets, offsets[lo] + max_rows, side="right")) - 1
        hi = min(max(hi, lo + 1), n_items)
        out.append((lo, hi))
        lo = hi
    return out


def _clusters_of(cl: SeedClusters, lo: int, hi: int) -> SeedClusters:
    """Items ``lo:hi`` of ``cl`` as a warm start (centroids and mask; views, no copy)."""
    return SeedClusters(cl.centroids[lo:hi], cl.mask[lo:hi], cl.sizes[lo:hi], cl.assign[:0])


def cluster_rows(
    model: LookalikeModel,
    rows: SeedRows,
    item_offsets: np.ndarray,
    init: SeedClusters | None = None,
    seed: int = 0,
    max_rows: int = CLUSTER_ROWS,
    progress: bool = False,
) -> SeedClusters:
    """:func:`cluster_for_model` of the seed rows ``rows`` (S, h), chunk by chunk of items.

    Only one chunk's transformed seeds (at most ``max_rows``, or one item's) are in memory
    at a time instead of the whole (S, h) table. Every item's clusters are those of one
    call over all items: the rows read are the table's bytes, an item's k-means seed is
    ``seed + i`` in both (``item_seeds``), its warm start is its own row of ``init``, and
    both backends cluster an item independently of the other items of the call (tested).
    Only ``inertia`` (a float64 sum of per-chunk terms) may differ from one call's in the
    last digits. The "average" variant (a running sum over the whole table) and a table
    of at most ``max_rows`` rows are clustered in one call.

    Args:
        model: the stage-2 model (variant, k, k-means backend and iterations).
        rows: the transformed seed rows, grouped by item.
        item_offsets: int64 (I + 1,) CSR offsets of each item's rows.
        init: previous clusters of the same items (warm start), or None.
        seed: k-means seed.
        max_rows: seed rows per chunk.
        progress: show a progress bar (faiss backend).
    """
    offsets = np.asarray(item_offsets, dtype=np.int64)
    n_items, k = offsets.size - 1, model.config.k
    chunks = item_chunks(offsets, max_rows)
    if model.config.variant == "average" or len(chunks) <= 1:
        return cluster_for_model(model, rows.table(), offsets, init=init, seed=seed,
                                 progress=progress)  # fmt: skip
    if init is not None and init.k != k:
        log.warning("warm start ignored: previous index has k=%d, asked k=%d", init.k, k)
        init = None
    centroids = np.zeros((n_items, k, rows.h), dtype=np.float32)
    mask = np.zeros((n_items, k), dtype=bool)
    sizes = np.zeros((n_items, k), dtype=np.int64)
    assign = np.zeros(int(offsets[-1]), dtype=np.int64)
    inertia = seconds = 0.0
    for lo, hi in chunks:
        r0, r1 = int(offsets[lo]), int(offsets[hi])
        part = cluster_for_model(
            model,
            rows.range(r0, r1),  # (R, h) the table's rows r0:r1
            offsets[lo : hi + 1] - r0,
            init=None if init is None else _clusters_of(init, lo, hi),
            seed=seed,
            progress=progress,
            item_seeds=seed + np.arange(lo, hi, dtype=np.int64),
        )
        centroids[lo:hi], mask[lo:hi], sizes[lo:hi] = part.centroids, part.mask, part.sizes
        assign[r0:r1] = part.assign
        inertia += part.inertia
        seconds += part.seconds
    return SeedClusters(centroids, mask, sizes, assign, inertia=inertia, seconds=seconds)


def index_from_clusters(
    model: LookalikeModel,
    clusters: SeedClusters,
    item_offsets: np.ndarray,
    item_ids: np.ndarray | None = None,
    version: int = 1,
    chunk: int = 8192,
    first_seen: np.ndarray | None = None,
) -> SeedIndex:
    """Add the model-dependent terms (global vectors, Gram matrices) to clusters
    (``first_seen`` (I,): each item's first-click time, 0 = not known)."""
    n = clusters.n_items
    ids = np.asarray([str(i) for i in range(n)] if item_ids is None else item_ids, dtype=str)
    was_training = model.training
    model.eval()
    try:
        upd = _finish(model, clusters, item_offsets, ids, 1, time.time(), chunk, first_seen)
    finally:
        model.train(was_training)
    return SeedIndex.from_update(upd, version=version)


def build_seed_index(
    model: LookalikeModel,
    seed_universal: np.ndarray,
    item_seed_csr: tuple[np.ndarray, np.ndarray],
    k: int | None = None,
    init: SeedIndex | SeedClusters | np.ndarray | None = None,
    seed: int = 0,
    item_ids: np.ndarray | None = None,
    version: int | None = None,
    progress: bool = False,
    chunk_items: int = CHUNK_ITEMS,
    first_seen: np.ndarray | None = None,
) -> SeedIndex:
    """Transform, cluster and index every item's seeds (:func:`index_items` over all items).

    Args:
        model: trained look-alike model (its transform, variant and global attention).
        seed_universal: float32 (n_users, m) universal embeddings of all candidate seeds.
        item_seed_csr: (offsets (I + 1,), users (S,)) seed users of every item.
        k: clusters per item (default: the model's k).
        init: previous SeedIndex (by item id) / SeedClusters / (I, k, h) centroids to
            warm-start from.
        seed: k-means seed.
        item_ids: raw ids (I,) (default: "0".."I-1").
        version: index generation (default: init's version + 1, or 1).
        progress: show a progress bar.
        chunk_items: rows per chunk of the index.
        first_seen: float64 (I,) time of each item's first click (0 = not known).
    """
    upd = index_items(
        model, seed_universal, item_seed_csr, init, item_ids=item_ids, k=k, seed=seed,
        progress=progress, first_seen=first_seen,
    )  # fmt: skip
    if version is None:
        version = init.version + 1 if isinstance(init, SeedIndex) else 1
    return SeedIndex.from_update(upd, version=version, chunk_items=chunk_items)
