"""Export universal user embeddings and item embeddings as .npy with id maps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ralm.data.encoded import EncodedDataset
from ralm.user.checkpoint import UserModel
from ralm.user.embed import embed_users

log = logging.getLogger(__name__)


def export_embeddings(
    model: UserModel, ds: EncodedDataset, out_dir: str | Path, batch_size: int = 4096
) -> dict[str, str]:
    """Write every user's and item's embedding with id maps; returns file name -> path.

    Files: ``user_embeddings.npy`` float32 (n_users, d) in user-index order,
    ``item_embeddings.npy`` float32 (n_items, d), ``user_ids.npy`` / ``item_ids.npy`` (str,
    row i = raw id) and ``embeddings.json`` (shapes, dataset, model config).

    Args:
        model: the trained stage-1 model.
        ds: the dataset whose users are embedded (must match the model).
        out_dir: output folder (created).
        batch_size: users embedded at once.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    users = embed_users(model, ds, batch_size=batch_size)  # (n_users, d)
    items = model.item_embedding.detach().float().numpy()  # (n_items, d)
    files = {
        "user_embeddings": root / "user_embeddings.npy",
        "item_embeddings": root / "item_embeddings.npy",
        "user_ids": root / "user_ids.npy",
        "item_ids": root / "item_ids.npy",
        "meta": root / "embeddings.json",
    }
    np.save(files["user_embeddings"], users)
    np.save(files["item_embeddings"], items)
    np.save(files["user_ids"], np.asarray(ds.user_ids).astype(str))
    np.save(files["item_ids"], np.asarray(ds.item_ids).astype(str))
    meta = {
        "dataset": ds.name,
        "n_users": int(users.shape[0]),
        "n_items": int(items.shape[0]),
        "dim": int(users.shape[1]),
        "config": model.config.model_dump(),
        "metrics": model.metrics,
    }
    files["meta"].write_text(json.dumps(meta, indent=2))
    log.info("exported %d user and %d item embeddings to %s", users.shape[0], items.shape[0], root)
    return {k: str(v) for k, v in files.items()}
