"""Online system: seed store, re-clustering job, HTTP service."""
