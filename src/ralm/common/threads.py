"""The one thread policy of every ``ralm`` command (CLI, trainers, service).

Two settings, both measured on a shared 2-core host (docs/SERVING.md, "Threads"):

* ``OMP_WAIT_POLICY=PASSIVE`` unless the caller set it: torch's OpenMP workers otherwise
  spin-wait between parallel regions, and on a host whose cores are shared that turned a
  0.25 s scoring pass into 4.1 s and a 4 us sqrt into 13.5 ms. OpenMP reads it once, when
  the runtime loads (``import torch``), so :func:`apply_wait_policy` must run before that:
  the CLI entry points call it first.
* one default intra-op thread count for every command, :func:`default_threads`:
  ``RALM_THREADS`` when set, else ``DEFAULT_MAX_THREADS`` (1). A command's
  ``--threads`` flag overrides it.
"""

from __future__ import annotations

import os

from ralm.errors import ConfigError

# one thread per process: measured faster than two on the shared 2-core host for both the
# scorer (matmul floor 132 ms vs 476 ms) and stage-1 training; RALM_THREADS=2 on an idle one
DEFAULT_MAX_THREADS = 1
ENV_THREADS = "RALM_THREADS"


def apply_wait_policy() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` (no spin-waiting) unless already set; before torch."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_threads() -> int:
    """Intra-op threads of every command: ``$RALM_THREADS``, else 1 (one per process).

    Raises:
        ConfigError: ``RALM_THREADS`` is not a positive integer.
    """
    raw = os.environ.get(ENV_THREADS, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"{ENV_THREADS} must be a positive integer, got {raw!r}")
        return n
    return max(1, min(DEFAULT_MAX_THREADS, os.cpu_count() or 1))


def apply_thread_policy() -> int:
    """Wait policy, then torch's intra-op threads to :func:`default_threads`; returns it."""
    apply_wait_policy()
    import torch

    n = default_threads()
    torch.set_num_threads(n)
    return n
