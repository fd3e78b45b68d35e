"""The one thread policy of every ``ralm`` command (CLI, trainers, service).

Two settings, both measured on a shared 2-core host (docs/SERVING.md, "Threads"):

* bounded spin-waiting, unless the caller set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``:
  ``GOMP_SPINCOUNT=2000`` (:data:`SPIN_COUNT`). Between parallel regions torch's OpenMP
  workers (libgomp, the runtime of torch's Linux wheels) spin for that many pause
  iterations (a short spin), then sleep. Both extremes were measured worse:

  - the runtime's default (300,000 iterations, milliseconds) on a host whose cores are
    shared turned a 0.25 s scoring pass into 4.1 s, a 4 us sqrt into 13.5 ms and a
    stage-2 step at two threads from 41 ms into 510 ms;
  - ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) pays a futex wake-up per parallel region:
    a stage-2 step at two threads on an idle host took 23-28 ms against 16-20 ms with the
    bounded spin (docs/LOOKALIKE.md, "Threads and spin-waiting").

  ``KMP_BLOCKTIME=0`` (sleep at once, unmeasured) is set too for the LLVM / Intel OpenMP
  runtimes, which do not read ``GOMP_SPINCOUNT``. OpenMP reads these once, when the runtime loads
  (``import torch``), so :func:`apply_wait_policy` must run before that: the CLI entry
  points call it first.
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
# libgomp spin iterations before an idle OpenMP worker sleeps (see the module docstring)
SPIN_COUNT = 2000


def apply_wait_policy() -> None:
    """Bounded spin-waiting (``GOMP_SPINCOUNT``), unless the caller chose a wait policy.

    Call before torch loads. A caller's ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` wins.
    """
    if any(os.environ.get(v) for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    os.environ.setdefault("KMP_BLOCKTIME", "0")


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


def inherit_threads() -> None:
    """Give the calling thread the process's torch intra-op thread count.

    ``torch.set_num_threads`` sets OpenMP's count for the calling thread only; a thread
    started later runs MKL's GEMMs on the runtime default (every core) until its first
    ATen parallel op, although ``torch.get_num_threads()`` says otherwise. Measured on a
    2-core host with the count set to 1: an ``(870000, 128) @ (128, 2)`` matmul took 62 ms
    on two cores in a fresh thread, 122 ms on one after this call. Long-lived threads that
    run torch (the service's batcher and re-clusterer) call it first.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(torch.get_num_threads())


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
