"""Pick the re-clustering backend a service runs its full cycles on (``recluster_backend``).

Separate from :mod:`ralm.serve.recluster` so the job does not import the Ray backend, which
itself builds on the job's unit of work.
"""

from __future__ import annotations

from ralm.serve.config import ServeConfig
from ralm.serve.recluster import BuilderBackend, LocalBackend


def make_backend(config: ServeConfig) -> BuilderBackend:
    """The backend ``config.recluster_backend`` names ("local" or "ray")."""
    if config.recluster_backend == "ray":
        from ralm.distributed.ray_index import RayBackend

        return RayBackend(
            address=config.ray_address,
            items_per_task=config.ray_items_per_task,
            max_retries=config.ray_max_retries,
            timeout_s=config.ray_timeout_s,
        )
    return LocalBackend()
