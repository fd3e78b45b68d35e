"""When to show tqdm progress bars (not on a non-TTY, not with ``RALM_NO_PROGRESS=1``)."""

from __future__ import annotations

import os
import sys


def progress_disabled() -> bool:
    """True when progress bars should be hidden."""
    return os.environ.get("RALM_NO_PROGRESS") == "1" or not sys.stderr.isatty()
