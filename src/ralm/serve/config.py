"""Configuration of the online service (paper Fig. 2), with the paper's defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServeConfig(BaseModel):
    """Every knob of ``ralm serve``; CLI flags override the defaults.

    Args:
        state_dir: folder for the SQLite seed store and the published index versions.
        max_seeds_per_item: N, the most recent clickers kept per item (paper: 3 million).
        recluster_every_s: T, seconds between re-clustering cycles (paper: 5 minutes).
        min_seeds: items with fewer embeddable seeds are not recommended (paper's system
            used about 100).
        fast_path: make items with a handful of seeds servable within seconds, using their
            most recent seeds as centroids (no k-means) until the next full cycle.
        fast_path_min_seeds: seeds needed before the fast path serves an item.
        fast_path_every_s: how often the fast path runs.
        batch_window_ms: micro-batching window: a batch closes this long after its first request.
        max_batch: micro-batch size cap.
        max_n: the largest ``n`` a client may ask for.
        max_clicks_per_request: cap on events in one ``POST /clicks``.
        max_exclude: cap on the ``exclude`` list of one request.
        max_body_bytes: requests with a larger body (declared or chunked) are refused (413)
            before parsing.
        max_id_length: longest user id, item id and feature field name (characters).
        max_string_length: longest string feature value (characters).
        max_features: most feature fields in one ``features`` object.
        max_feature_values: longest multivalent feature list (values of one field).
        max_clock_skew_s: a click's ``ts`` may be at most this many seconds in the future.
        token: bearer token required by write endpoints (clicks, admin); None = open.
        synchronous: SQLite ``synchronous`` pragma. FULL fsyncs the WAL on every commit
            (survives power loss); NORMAL survives ``kill -9`` of the server (the WAL is in
            the OS page cache when the commit returns) but not a power cut.
        keep_index_versions: how many published index versions are kept on disk.
        torch_threads: intra-op threads for scoring (None = torch default).
        seed: seed of the k-means runs.
        score_dtype: precision of the scorer's centroid table, float32 or bfloat16.
        recluster_backend: where the full re-clustering cycle runs: "local" (this
            process) or "ray" (one Ray task per chunk of items; ``pip install ralm[ray]``).
        ray_address: Ray cluster to join ("auto", "ray://host:10001", ...); None starts a
            local Ray runtime on first use.
        ray_items_per_task: items per Ray task.
        ray_max_retries: retries of a failed Ray task before the cycle fails.
        ray_timeout_s: a Ray cycle taking longer fails (None = no limit).
        store: the seed store: ``redis://host:port/db`` (shared by several replicas, which
            then elect one re-clustering leader and follow the index versions it
            publishes) or a SQLite file; None = ``state_dir/seeds.sqlite3`` (one process).
        leader_ttl_s: replicas only: lease of the re-clustering leader lock; a dead
            leader is replaced after about this long.
        version_poll_s: replicas only: seconds between polls of the published version
            pointer (a publish also wakes followers at once through Redis pub/sub).
        candidates: C, candidates per request retrieved by an approximate search before
            exact scoring (:mod:`ralm.serve.candidates`); None = score every servable
            item exactly (the default). Must be at least ``max_n``.
        candidate_vectors: what the retrieval index holds per item: "mean" (global vector
            and size-weighted centroid mean, with the audience prior), "global" (global
            vector only) or "centroids" (every centroid; k times the memory).
        candidate_nprobe: IVF lists searched per request (more: better recall, slower).
        candidate_nlist: IVF lists (None: 2 sqrt(items) at each build).
        candidate_retrain_growth: rebuild the retrieval index (re-train its lists) when
            the indexed items exceed this multiple of the count it was built on.
    """

    model_config = ConfigDict(extra="forbid")

    state_dir: Path = Field(
        default=Path("serve-state"), description="SQLite store + published indexes."
    )
    max_seeds_per_item: int = Field(
        default=3_000_000, ge=1, description="N most recent clickers kept."
    )
    recluster_every_s: float = Field(
        default=300.0, gt=0, description="T: seconds between re-clusters."
    )
    min_seeds: int = Field(default=10, ge=1, description="Fewer embeddable seeds: not recommended.")
    fast_path: bool = Field(default=True, description="Serve items with few seeds within seconds.")
    fast_path_min_seeds: int = Field(default=3, ge=1, description="Seeds needed by the fast path.")
    fast_path_every_s: float = Field(default=2.0, gt=0, description="Fast-path period in seconds.")
    batch_window_ms: float = Field(default=2.0, ge=0, description="Micro-batch window (ms).")
    max_batch: int = Field(default=64, ge=1, description="Micro-batch size cap.")
    max_n: int = Field(default=1000, ge=1, description="Largest n a client may request.")
    max_clicks_per_request: int = Field(
        default=10_000, ge=1, description="Events per POST /clicks."
    )
    max_exclude: int = Field(default=10_000, ge=0, description="Items in one exclude list.")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Request body cap in bytes (413 above)."
    )
    max_id_length: int = Field(
        default=256, ge=1, description="Longest user/item id or feature field name (chars)."
    )
    max_string_length: int = Field(
        default=1024, ge=1, description="Longest string feature value (chars)."
    )
    max_features: int = Field(default=256, ge=1, description="Most fields in one features object.")
    max_feature_values: int = Field(
        default=1024, ge=1, description="Longest multivalent feature list."
    )
    max_clock_skew_s: float = Field(
        default=3600.0, ge=0, description="How far in the future a click's ts may be (s)."
    )
    token: str | None = Field(default=None, description="Bearer token for write endpoints.")
    synchronous: str = Field(
        default="FULL", pattern="^(FULL|NORMAL|EXTRA)$", description="SQLite sync."
    )
    keep_index_versions: int = Field(
        default=2, ge=1, description="Published versions kept on disk."
    )
    torch_threads: int | None = Field(default=None, ge=1, description="Scoring threads.")
    seed: int = Field(default=0, description="k-means seed.")
    score_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="Centroid table precision for scoring (bfloat16: half the memory "
        "traffic; accuracy in docs/LOOKALIKE.md).",
    )
    recluster_backend: Literal["local", "ray"] = Field(
        default="local", description="Full re-cluster cycle: local process or Ray tasks."
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster address (None: start a local Ray runtime)."
    )
    ray_items_per_task: int = Field(default=2048, ge=1, description="Items per Ray task.")
    ray_max_retries: int = Field(default=2, ge=0, description="Retries of a failed Ray task.")
    ray_timeout_s: float | None = Field(
        default=None, gt=0, description="A Ray re-cluster cycle taking longer fails."
    )
    store: str | None = Field(
        default=None,
        min_length=1,
        description="Seed store: redis://host:port/db (replicas) or a SQLite file "
        "[default: STATE_DIR/seeds.sqlite3].",
    )
    leader_ttl_s: float = Field(
        default=10.0, ge=0.05, le=3600, description="Replicas: leader lock lease (s)."
    )
    version_poll_s: float = Field(
        default=1.0, gt=0, le=3600, description="Replicas: version pointer poll period (s)."
    )

    candidates: int | None = Field(
        default=None,
        ge=1,
        description="ANN pre-filter: score only this many retrieved candidates per request "
        "(None: score every item exactly).",
    )
    candidate_vectors: Literal["mean", "global", "centroids"] = Field(
        default="mean", description="Retrieval vectors per item (docs/SERVING.md)."
    )
    candidate_nprobe: int = Field(default=32, ge=1, description="IVF lists searched per query.")
    candidate_nlist: int | None = Field(
        default=None, ge=1, description="IVF lists (None: 2 sqrt(items))."
    )
    candidate_retrain_growth: float = Field(
        default=2.0, gt=1.0, description="Re-train the retrieval index when items grow this much."
    )

    @model_validator(mode="after")
    def _check_candidates(self) -> ServeConfig:
        if self.candidates is not None and self.candidates < self.max_n:
            raise ValueError(
                f"candidates ({self.candidates}) must be at least max_n ({self.max_n}): a "
                "request may ask for max_n items; raise --candidates or lower --max-n"
            )
        return self

    @property
    def replicated(self) -> bool:
        """True when the store is Redis: several replicas share it and its version pointer."""
        return self.store is not None and self.store.startswith(
            ("redis://", "rediss://", "unix://")
        )
