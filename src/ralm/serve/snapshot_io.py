"""Published index versions on disk, so a restart serves without re-clustering.

Each version is a seed-index folder in stage 2's one format
(:mod:`ralm.lookalike.index_io`), named by its version::

    <state_dir>/index/v00000042/   meta.json (per-chunk sha256) + chunk-<sha>.safetensors

A version is written with :meth:`SeedIndex.save` and ``prev`` = the last saved version:
only the chunks that changed are written, the others are hard-linked from ``prev`` (so
deleting an old version never breaks a newer one). The folder is built in a temporary
sibling and renamed into place (:func:`ralm.common.atomic.atomic_dir`): a crash leaves the
complete folder or none, plus at most a ``.v*.tmp-*`` folder that
:func:`remove_stale_temporaries` deletes at the next start.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from ralm.common.atomic import remove_stale_temporaries
from ralm.errors import CheckpointError
from ralm.lookalike.seed_index import SeedIndex

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"^v\d{8}$")


def version_dir(root: str | Path, version: int) -> Path:
    """The folder of one version: ``root/v{version:08d}``."""
    return Path(root) / f"v{int(version):08d}"


def list_versions(root: str | Path) -> list[Path]:
    """Version folders under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _VERSION_DIR.match(p.name) and p.is_dir()),
                  reverse=True)  # fmt: skip


def save_snapshot(index: SeedIndex, root: str | Path, prev: str | Path | None = None) -> Path:
    """Write ``index`` under ``root/v{version:08d}`` atomically; returns that folder."""
    final = version_dir(root, index.version)
    if final.exists():
        return final
    prev_dir = Path(prev) if prev is not None and Path(prev).is_dir() else None
    index.save(final, prev=prev_dir)
    return final


def load_snapshot(path: str | Path) -> SeedIndex:
    """Read and verify one version folder (CheckpointError naming the file when unsound)."""
    try:
        return SeedIndex.load(path)
    except CheckpointError:
        raise
    except Exception as e:  # anything else a damaged folder can raise
        msg = f"published index {path} is unreadable: {type(e).__name__}: {e}"
        raise CheckpointError(msg) from e


def clean_temporaries(root: str | Path) -> int:
    """Remove half-written ``.v*.tmp-*`` folders left by a crash during a publish."""
    n = remove_stale_temporaries(root)
    if n:
        log.warning("removed %d half-written temporaries from %s", n, root)
    return n


def prune_versions(root: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest version folders (and stale temporaries)."""
    for p in list_versions(root)[max(0, keep) :]:
        shutil.rmtree(p, ignore_errors=True)
    remove_stale_temporaries(root)
