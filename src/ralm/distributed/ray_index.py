"""Re-clustering on Ray: one Ray task per chunk of items, each running the ONE builder.

The public names of the Ray re-clustering, in three modules by concept:

* :mod:`ralm.distributed.ray_serve`: the serving job's backend (:class:`RayBackend`,
  ``ServeConfig.recluster_backend = "ray"``; :class:`StoreLocation`, :func:`item_chunks`,
  :func:`prev_rows`): one task per chunk of changed items, each running
  :func:`ralm.serve.recluster.build_update` against the seed store it reopens;
* :mod:`ralm.distributed.ray_train`: the training / evaluation forms
  (:func:`ray_index_items`, :func:`ray_cluster_for_model`), drop-in for
  ``index_items`` / ``cluster_for_model`` over arrays put in the object store once;
* :mod:`ralm.distributed.ray_runtime`: what both share (:func:`ensure_ray`,
  :class:`ModelSpec`, the worker cache, retries, :class:`RayTaskFailed`, the
  ``RALM_RAY_FAULT`` test hook).

This module re-exports them, so ``from ralm.distributed.ray_index import ...`` keeps
working.
"""

from __future__ import annotations

from ralm.distributed.ray_runtime import (
    DEFAULT_ITEMS_PER_TASK,
    RAY_FAULT_ENV,
    InjectedFault,
    ModelSpec,
    RayTaskFailed,
    ensure_ray,
)
from ralm.distributed.ray_serve import RayBackend, StoreLocation, item_chunks, prev_rows
from ralm.distributed.ray_train import ray_cluster_for_model, ray_index_items

__all__ = [
    "DEFAULT_ITEMS_PER_TASK",
    "RAY_FAULT_ENV",
    "InjectedFault",
    "ModelSpec",
    "RayBackend",
    "RayTaskFailed",
    "StoreLocation",
    "ensure_ray",
    "item_chunks",
    "prev_rows",
    "ray_cluster_for_model",
    "ray_index_items",
]
