"""The one progress-bar policy (docs/ARCHITECTURE.md, conventions).

Bars are shown on a TTY only, and never when ``RALM_NO_PROGRESS=1``.
"""

from __future__ import annotations

import os
import sys


def progress_disabled() -> bool:
    """True when progress bars should be off (stderr not a TTY, or ``RALM_NO_PROGRESS=1``)."""
    return os.environ.get("RALM_NO_PROGRESS") == "1" or not sys.stderr.isatty()


def progress_enabled() -> bool:
    """The negation of :func:`progress_disabled`."""
    return not progress_disabled()
