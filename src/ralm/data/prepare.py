"""``ralm data prepare``: any supported source -> split, encoded dataset folder.

Sources (``SOURCE``):

- ``movielens-100k``: the cached ML-100K (fetched first if needed, see :mod:`.fetch`);
- ``ml100k:DIR``: a GroupLens ``ml-100k`` folder (or the RecBole copy of it);
- ``ml1m:DIR``: a GroupLens ``ml-1m`` folder;
- ``recbole:DIR``: a folder of RecBole atomic files (generic mapping);
- ``lightgcn:DIR``: ``train.txt`` / ``test.txt`` lines ``user item item ...`` (LightGCN /
  NGCF data, see :mod:`.user_item_lists`; use ``--split given``);
- ``PATH.toml``: a generic dataset description (see :mod:`.schema`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ralm.common.atomic import atomic_dir
from ralm.data.encoded import EncodedDataset
from ralm.data.fetch import cached_movielens_100k, fetch_movielens_100k
from ralm.data.ingest import RawData, ingest, load_raw
from ralm.data.readers import read_ml1m, read_ml100k, read_ml100k_recbole, read_recbole
from ralm.data.schema import load_schema
from ralm.data.splits import SplitConfig
from ralm.data.user_item_lists import read_user_item_lists
from ralm.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE_FORMS = (
    "movielens-100k, ml100k:DIR, ml1m:DIR, recbole:DIR, lightgcn:DIR or a dataset .toml file"
)


def _ml100k_folder(folder: Path) -> RawData:
    if (folder / "u.data").is_file():
        return read_ml100k(folder)
    if (folder / "ml-100k.inter").is_file():
        return read_ml100k_recbole(folder)
    raise ConfigError(f"{folder}: neither a GroupLens ml-100k folder (u.data) nor ml-100k.inter")


def load_source(source: str, cache_dir: str | Path | None = None) -> RawData:
    """Read a source (see module docstring) into :class:`RawData`.

    Raises:
        ConfigError: unknown source form or missing folder.
        DataError: malformed files.
    """
    if source == "movielens-100k":
        found = cached_movielens_100k(cache_dir) or fetch_movielens_100k(cache_dir)
        folder, fmt = found
        return read_ml100k_recbole(folder) if fmt == "recbole" else read_ml100k(folder)
    kind, sep, rest = source.partition(":")
    if sep and kind in ("ml100k", "ml1m", "recbole", "lightgcn"):
        folder = Path(rest).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"source {source!r}: {folder} is not a folder")
        if kind == "ml100k":
            return _ml100k_folder(folder)
        if kind == "lightgcn":
            return read_user_item_lists(folder)
        return read_ml1m(folder) if kind == "ml1m" else read_recbole(folder)
    path = Path(source).expanduser()
    if path.suffix.lower() == ".toml":
        return load_raw(load_schema(path))
    raise ConfigError(f"unknown data source {source!r}; expected {SOURCE_FORMS}")


def write_dataset(ds: EncodedDataset, out: str | Path) -> Path:
    """Write ``ds`` to ``out``, replacing an older encoded dataset there atomically.

    Raises:
        ConfigError: ``out`` exists, is not empty and is not an encoded dataset.
    """
    dest = Path(out)
    if dest.exists() and (
        not dest.is_dir() or (any(dest.iterdir()) and not (dest / "meta.json").is_file())
    ):
        raise ConfigError(
            f"--out {dest} exists and is not an encoded dataset; refusing to overwrite"
        )
    with atomic_dir(dest) as tmp:  # built aside, fsynced, renamed into place
        ds.save(tmp)
    return dest


def prepare(
    source: str,
    out: str | Path | None = None,
    split: SplitConfig | None = None,
    *,
    cache_dir: str | Path | None = None,
) -> EncodedDataset:
    """Read, split and encode a source; write it to ``out`` when given.

    Args:
        source: see the module docstring.
        out: output folder (replaced if it holds an older encoded dataset).
        split: split configuration (default :class:`SplitConfig`: per-user chronological
            10 % valid / 10 % test, 10 % of items with >= 10 clicks held out as cold).
        cache_dir: cache root for ``movielens-100k``.

    Returns:
        The encoded dataset (in memory).
    """
    t0 = time.perf_counter()
    raw = load_source(source, cache_dir)
    ds = ingest(raw, split or SplitConfig())
    ds.extra["source"] = source
    if out is not None:
        write_dataset(ds, out)
    log.info("prepared %s in %.1fs", ds.name, time.perf_counter() - t0)
    return ds
