"""Progress-bar policy of stage 1 (docs/ARCHITECTURE.md, conventions)."""

from __future__ import annotations

import os
import sys


def progress_disabled() -> bool:
    """Progress bars are off when stderr is not a TTY or ``RALM_NO_PROGRESS=1``."""
    return os.environ.get("RALM_NO_PROGRESS") == "1" or not sys.stderr.isatty()
