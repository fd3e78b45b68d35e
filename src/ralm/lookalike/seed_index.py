"""The seed index: everything serving needs to score users against items, on disk.

Per item: centroids (k, h), mask, cluster sizes, global-attention vector, Gram matrix
``C C^T`` (so |E_local| costs O(k^2) per pair, see :mod:`ralm.lookalike.scorer`), seed
count and raw item id. ``version`` is the clustering generation (the re-clustering job
increments it); ``FORMAT_VERSION`` is the on-disk layout and is checked on load.

Layout of a seed-index folder (written to a temporary sibling, then renamed into place)::

    meta.json            format_version, version, created_at, k, h, n_items, item_ids
    arrays.safetensors   centroids, mask, sizes, global_vec, gram, n_seeds
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ralm.errors import CheckpointError
from ralm.lookalike.clustering import SeedClusters, average_seeds, cluster_seeds
from ralm.lookalike.clustering_batched import lloyd_batched
from ralm.lookalike.model import LookalikeModel
from ralm.lookalike.scorer import gram_matrix

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_ARRAYS = ("centroids", "mask", "sizes", "global_vec", "gram", "n_seeds")


@dataclass
class SeedIndex:
    """Per-item seed clusters and precomputed attention terms, ready for scoring.

    Attributes:
        item_ids: str (I,) raw item id of every row.
        centroids: float32 (I, k, h).
        mask: bool (I, k) valid centroids.
        sizes: int64 (I, k) seeds per centroid.
        global_vec: float32 (I, h) global-attention vectors.
        gram: float32 (I, k, k) ``C C^T`` per item.
        n_seeds: int64 (I,) seeds per item.
        version: clustering generation (incremented by every re-clustering).
        created_at: unix time of creation.
    """

    item_ids: np.ndarray
    centroids: np.ndarray
    mask: np.ndarray
    sizes: np.ndarray
    global_vec: np.ndarray
    gram: np.ndarray
    n_seeds: np.ndarray
    version: int = 1
    created_at: float = field(default_factory=time.time)

    @property
    def n_items(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def k(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def h(self) -> int:
        return int(self.centroids.shape[2])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Torch views of what ``LookalikeModel.score`` takes: ``model.score(e_u, **t)``."""
        return {
            "centroids": torch.from_numpy(self.centroids),
            "mask": torch.from_numpy(self.mask),
            "global_vec": torch.from_numpy(self.global_vec),
            "gram": torch.from_numpy(self.gram),
            "sizes": torch.from_numpy(self.sizes),
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically: build in a temporary sibling folder, then rename over ``path``."""
        root = Path(path)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            arrays = {
                "centroids": np.ascontiguousarray(self.centroids, dtype=np.float32),
                "mask": np.ascontiguousarray(self.mask, dtype=np.bool_),
                "sizes": np.ascontiguousarray(self.sizes, dtype=np.int64),
                "global_vec": np.ascontiguousarray(self.global_vec, dtype=np.float32),
                "gram": np.ascontiguousarray(self.gram, dtype=np.float32),
                "n_seeds": np.ascontiguousarray(self.n_seeds, dtype=np.int64),
            }
            save_file(arrays, str(tmp / "arrays.safetensors"))
            meta = {
                "format_version": FORMAT_VERSION,
                "version": int(self.version),
                "created_at": float(self.created_at),
                "n_items": self.n_items,
                "k": self.k,
                "h": self.h,
                "item_ids": [str(x) for x in self.item_ids],
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
            old = None
            if root.exists():
                old = root.with_name(f".{root.name}.old-{os.getpid()}-{time.time_ns()}")
                os.replace(root, old)
            os.replace(tmp, root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("wrote seed index v%d (%d items) to %s", self.version, self.n_items, root)
        return root

    @classmethod
    def load(cls, path: str | Path) -> SeedIndex:
        """Load a seed index; raises CheckpointError naming the file when it is unusable."""
        root = Path(path)
        meta_path, arr_path = root / "meta.json", root / "arrays.safetensors"
        for p in (meta_path, arr_path):
            if not p.is_file():
                raise CheckpointError(f"seed index {root} is missing {p.name}")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{meta_path} is corrupted: {e}") from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{meta_path}: seed index format {meta.get('format_version')} is not supported "
                f"(expected {FORMAT_VERSION}); rebuild it with `ralm train lookalike`"
            )
        try:
            arrays = load_file(str(arr_path))
        except Exception as e:  # safetensors raises several types on bad bytes
            raise CheckpointError(f"{arr_path} is corrupted: {e}") from e
        missing = [a for a in _ARRAYS if a not in arrays]
        if missing:
            raise CheckpointError(f"{arr_path} lacks arrays {missing}")
        n, k, h = int(meta["n_items"]), int(meta["k"]), int(meta["h"])
        expect = {
            "centroids": (n, k, h),
            "mask": (n, k),
            "sizes": (n, k),
            "global_vec": (n, h),
            "gram": (n, k, k),
            "n_seeds": (n,),
        }
        for name, shape in expect.items():
            if arrays[name].shape != shape:
                raise CheckpointError(
                    f"{arr_path}: {name} has shape {arrays[name].shape}, meta.json says {shape}"
                )
        if len(meta["item_ids"]) != n:
            raise CheckpointError(f"{meta_path}: {len(meta['item_ids'])} item ids for {n} items")
        return cls(
            item_ids=np.asarray(meta["item_ids"], dtype=str),
            version=int(meta["version"]),
            created_at=float(meta["created_at"]),
            **{a: arrays[a] for a in _ARRAYS},
        )


@torch.no_grad()
def transform_seeds(
    model: LookalikeModel, seed_universal: np.ndarray, users: np.ndarray, batch: int = 65536
) -> np.ndarray:
    """Transformed embeddings of seed rows: universal (n_users, m)[users] -> (S, h) float32."""
    out = np.empty((users.size, model.config.h), dtype=np.float32)
    for lo in range(0, users.size, batch):
        u = users[lo : lo + batch]
        x = torch.from_numpy(np.ascontiguousarray(seed_universal[u], dtype=np.float32))
        out[lo : lo + u.size] = model.transform(x).numpy()  # (b, h)
    return out


def cluster_for_model(
    model: LookalikeModel,
    seed_emb: np.ndarray,
    item_offsets: np.ndarray,
    k: int | None = None,
    init: SeedIndex | SeedClusters | np.ndarray | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SeedClusters:
    """Cluster transformed seeds the way ``model`` expects (k-means, or the mean for 'average')."""
    cfg = model.config
    if cfg.variant == "average":
        return average_seeds(seed_emb, item_offsets)
    k = cfg.k if k is None else k
    init_c, init_m = None, None
    if isinstance(init, SeedIndex | SeedClusters):
        init_c, init_m = init.centroids, init.mask
    elif init is not None:
        init_c = init
    if init_c is not None and init_c.shape[1] != k:
        log.warning("warm start ignored: previous index has k=%d, asked k=%d", init_c.shape[1], k)
        init_c, init_m = None, None
    if cfg.kmeans_backend == "torch":
        return lloyd_batched(
            seed_emb,
            item_offsets,
            k,
            init=init_c,
            init_mask=init_m,
            niter=cfg.kmeans_warm_niter if init_c is not None else cfg.kmeans_niter,
            seed=seed,
        )
    return cluster_seeds(
        seed_emb,
        item_offsets,
        k,
        init=init_c,
        init_mask=init_m,
        seed=seed,
        niter=cfg.kmeans_niter,
        warm_niter=cfg.kmeans_warm_niter,
        progress=progress,
    )


@torch.no_grad()
def index_from_clusters(
    model: LookalikeModel,
    clusters: SeedClusters,
    item_offsets: np.ndarray,
    item_ids: np.ndarray | None = None,
    version: int = 1,
    chunk: int = 8192,
) -> SeedIndex:
    """Add the model-dependent terms (global vectors, Gram matrices) to clusters."""
    n_items = clusters.n_items
    glob = np.empty((n_items, model.config.h), dtype=np.float32)
    gram = np.empty((n_items, clusters.k, clusters.k), dtype=np.float32)
    for lo in range(0, n_items, chunk):
        c = torch.from_numpy(clusters.centroids[lo : lo + chunk])  # (b, k, h)
        m = torch.from_numpy(clusters.mask[lo : lo + chunk])  # (b, k)
        n = torch.from_numpy(clusters.sizes[lo : lo + chunk])  # (b, k)
        glob[lo : lo + chunk] = model.item_global(c, m, n).numpy()  # (b, h)
        gram[lo : lo + chunk] = gram_matrix(c).numpy()  # (b, k, k)
    ids = np.asarray([str(i) for i in range(n_items)] if item_ids is None else item_ids, dtype=str)
    return SeedIndex(
        item_ids=ids,
        centroids=clusters.centroids,
        mask=clusters.mask,
        sizes=clusters.sizes,
        global_vec=glob,
        gram=gram,
        n_seeds=np.diff(np.asarray(item_offsets, dtype=np.int64)),
        version=version,
    )


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
) -> SeedIndex:
    """Transform, cluster and index every item's seeds (training and the re-clustering job).

    Args:
        model: trained look-alike model (its transform, variant and global attention).
        seed_universal: float32 (n_users, m) universal embeddings of all candidate seeds.
        item_seed_csr: (offsets (I + 1,), users (S,)) seed users of every item.
        k: clusters per item (default: the model's k).
        init: previous SeedIndex / SeedClusters / (I, k, h) centroids to warm-start from.
        seed: k-means seed.
        item_ids: raw ids (I,) (default: "0".."I-1").
        version: index generation (default: init's version + 1, or 1).
        progress: show a progress bar.
    """
    offsets, users = (np.asarray(a, dtype=np.int64) for a in item_seed_csr)
    if offsets.size < 1 or offsets[-1] != users.size:
        raise ValueError("item_seed_csr offsets must end at the number of seed rows")
    if users.size and (users.min() < 0 or users.max() >= seed_universal.shape[0]):
        raise ValueError(f"seed user index out of range 0..{seed_universal.shape[0] - 1}")
    was_training = model.training
    model.eval()
    seed_emb = transform_seeds(model, seed_universal, users)  # (S, h)
    clusters = cluster_for_model(model, seed_emb, offsets, k, init, seed, progress)
    if version is None:
        version = init.version + 1 if isinstance(init, SeedIndex) else 1
    index = index_from_clusters(model, clusters, offsets, item_ids, version)
    model.train(was_training)
    return index
