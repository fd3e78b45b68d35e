"""The holder of the served seed index: publishing is one atomic reference swap.

The index itself is stage 2's immutable :class:`ralm.lookalike.seed_index.SeedIndex`
(row chunks shared between versions, :meth:`SeedIndex.updated` for incremental updates).
A request reads ``holder.current()`` once and finishes on that object, so it never sees
a half-updated index, and an old version is freed when its last request ends.
"""

from __future__ import annotations

import threading

from ralm.lookalike.seed_index import SeedIndex


class IndexHolder:
    """Holds the current :class:`SeedIndex`; versions strictly increase.

    Args:
        initial: the first index.
    """

    def __init__(self, initial: SeedIndex) -> None:
        self._lock = threading.Lock()
        self._current = initial

    def current(self) -> SeedIndex:
        """The index to use for a whole request (read it once per request)."""
        with self._lock:
            return self._current

    @property
    def version(self) -> int:
        return self.current().version

    def publish(self, index: SeedIndex) -> None:
        """Make ``index`` current; its version must exceed the current one."""
        with self._lock:
            if index.version <= self._current.version:
                raise ValueError(
                    f"cannot publish version {index.version}: current is "
                    f"{self._current.version} (versions strictly increase)"
                )
            self._current = index
