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

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

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
    """Wait policy, then torch's intra-op threads to :func:`default_threads`; returns it.

    When torch is not imported yet, the thread count is set right after its first import
    (:class:`_SetThreadsOnImport`) instead of importing it here: a command that never
    uses torch (``ralm train user --help``) does not pay for loading it.
    """
    apply_wait_policy()
    n = default_threads()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    else:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _SetThreadsOnImport)]
        sys.meta_path.insert(0, _SetThreadsOnImport(n))
    return n


class _SetThreadsOnImport(importlib.abc.MetaPathFinder):
    """Import hook: ``torch.set_num_threads(n)`` as soon as ``import torch`` completes.

    Args:
        n: intra-op threads.
    """

    def __init__(self, n: int) -> None:
        self.n = n

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)  # once; the real finders locate torch
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        if loader is None:
            return spec
        run, n = loader.exec_module, self.n

        def exec_module(module: ModuleType) -> None:
            run(module)
            module.set_num_threads(n)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
