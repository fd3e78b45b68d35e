"""Scale-out on existing engines (Ray re-clustering: :mod:`ralm.distributed.ray_index`)."""
