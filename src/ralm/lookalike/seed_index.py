"""The seed index: THE stage-2 artifact that training, evaluation and serving score against.

One type, one builder, one disk format:

* :class:`SeedIndex` (rows in shared chunks, :class:`IndexChunk`) and :class:`IndexUpdate`
  (new rows of some items): :mod:`ralm.lookalike.index_table`;
* :func:`index_items`, the ONE builder (transform, cluster with the model's variant and
  k-means backend, global vectors, Gram matrices), and its whole-table forms
  ``build_seed_index`` / ``cluster_for_model`` / ``index_from_clusters``, and
  ``cluster_rows`` (training's chunk-by-chunk clustering of :class:`SeedRows`):
  :mod:`ralm.lookalike.index_builder`;
* the on-disk format (training's ``lookalike/seed_index/`` and serving's versions):
  :mod:`ralm.lookalike.index_io`.
"""

from __future__ import annotations

from ralm.lookalike.index_builder import (
    build_seed_index,
    cluster_for_model,
    cluster_rows,
    index_from_clusters,
    index_items,
    item_seeds,
    transform_seeds,
)
from ralm.lookalike.index_io import FORMAT_VERSION
from ralm.lookalike.index_table import CHUNK_ITEMS, ROW_ARRAYS, IndexChunk, IndexUpdate, SeedIndex

__all__ = [
    "CHUNK_ITEMS",
    "FORMAT_VERSION",
    "ROW_ARRAYS",
    "IndexChunk",
    "IndexUpdate",
    "SeedIndex",
    "build_seed_index",
    "cluster_for_model",
    "cluster_rows",
    "index_from_clusters",
    "index_items",
    "item_seeds",
    "transform_seeds",
]
