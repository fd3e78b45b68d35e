"""Build a :class:`ServingModel` from a training run folder and its encoded dataset.

Run folder layout (what ``ralm train`` writes)::

    RUN_DIR/user/                  stage-1 checkpoint (load_user_model)
    RUN_DIR/lookalike/             stage-2 checkpoint (load_lookalike_model) + seed_index/
    RUN_DIR/export/ (optional)     ``ralm export`` output: user_embeddings.npy, user_ids.npy

Known users are served from the exported embedding table when present (memory-mapped),
otherwise every dataset user is embedded once at start-up. New users are embedded from raw
features with ``FeatureEncoder`` + ``embed_batch`` (the same code path as training).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ralm.errors import CheckpointError
from ralm.serve.runtime import ServingModel, TableEmbedder

log = logging.getLogger(__name__)

EXPORT_DIRS = ("export", "embeddings")


def _embedding_table(run_dir: Path, ds: Any, user_model: Any, dim: int) -> np.ndarray:
    from ralm.user.embed import embed_users

    for name in EXPORT_DIRS:
        d = run_dir / name
        emb, ids = d / "user_embeddings.npy", d / "user_ids.npy"
        if emb.is_file() and ids.is_file():
            table = np.load(emb, mmap_mode="r")
            same = np.array_equal(np.load(ids, allow_pickle=False), np.asarray(ds.user_ids))
            if table.shape == (ds.n_users, dim) and same:
                log.info("using exported user embeddings %s", emb)
                return table
            log.warning("%s does not match the dataset's users; re-embedding", emb)
    log.info("embedding %d dataset users with the stage-1 model", ds.n_users)
    return embed_users(user_model, ds)


def load_serving_model(run_dir: str | Path, data_dir: str | Path) -> ServingModel:
    """Stage-1 + stage-2 models, known-user table, training seed index and history clicks.

    Raises:
        CheckpointError: a missing or mismatched run folder, with the path in the message.
    """
    from ralm.data.encoded import EncodedDataset
    from ralm.data.feature_encoder import FeatureEncoder
    from ralm.lookalike.checkpoint import load_lookalike_model
    from ralm.lookalike.seed_index import SeedIndex
    from ralm.user.checkpoint import load_user_model
    from ralm.user.embed import embed_batch

    run = Path(run_dir)
    for sub in ("user", "lookalike"):
        if not (run / sub).is_dir():
            raise CheckpointError(f"{run} is not a training run folder: {run / sub} is missing")
    try:
        ds = EncodedDataset.load(data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from e
    user_model = load_user_model(run / "user", ds)
    scorer, cfg = load_lookalike_model(run / "lookalike")
    if cfg.m != user_model.config.dim:
        raise CheckpointError(
            f"{run / 'lookalike'} expects universal embeddings of dim {cfg.m}, "
            f"{run / 'user'} produces {user_model.config.dim}"
        )
    table = _embedding_table(run, ds, user_model, cfg.m)
    encoder = FeatureEncoder.from_dataset(ds)

    def features(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return embed_batch(user_model, encoder.batch(records))  # (B, m)

    initial = None
    if (run / "lookalike" / "seed_index").is_dir():
        try:  # verified (checksums, shapes, finite); an unsound one is re-clustered instead
            initial = SeedIndex.load(run / "lookalike" / "seed_index")
        except CheckpointError as e:
            log.error("not serving the training seed index (re-clustering instead): %s", e)

    def history() -> Iterator[tuple[str, str, float]]:
        it = ds.interactions
        pos = np.flatnonzero(np.asarray(it.label) > 0)
        users, items = np.asarray(ds.user_ids), np.asarray(ds.item_ids)
        from tqdm.auto import tqdm

        from ralm.common.progress import progress_enabled

        starts = range(0, pos.size, 100_000)
        for lo in tqdm(
            starts, desc="seed store", unit="100k clicks", disable=not progress_enabled()
        ):
            rows = pos[lo : lo + 100_000]
            u = users[np.asarray(it.user)[rows]].tolist()
            i = items[np.asarray(it.item)[rows]].tolist()
            t = np.asarray(it.ts)[rows].astype(float).tolist()
            yield from zip(u, i, t, strict=True)

    digest = hashlib.sha1()
    for f in (run / "user" / "model.safetensors", run / "lookalike" / "model.safetensors"):
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)

    return ServingModel(  # the clustering settings (k-means backend included) are cfg's
        scorer=scorer,
        embedder=TableEmbedder(np.asarray(ds.user_ids), table, features),
        initial_index=initial,
        bootstrap_clicks=history,
        fingerprint=digest.hexdigest(),
    )
