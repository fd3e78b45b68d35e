"""Scale-out on existing engines: Ray re-clustering (:mod:`ralm.distributed.ray_index`
re-exports the serving backend of :mod:`~ralm.distributed.ray_serve`, the training forms of
:mod:`~ralm.distributed.ray_train` and the shared plumbing of
:mod:`~ralm.distributed.ray_runtime`)."""
