"""Universal user embeddings from a trained stage-1 model (one code path for all callers).

Training-set users, evaluation users and brand-new users from the service all go through
:func:`embed_batch`: build a :class:`UserBatch` (``gather_users`` for dataset users,
``ralm.data.feature_encoder.FeatureEncoder`` for raw features of a new user) and embed it.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ralm.common.progress import progress_disabled
from ralm.data.batching import UserBatch, gather_users
from ralm.data.encoded import EncodedDataset
from ralm.errors import DataError
from ralm.user.checkpoint import UserModel


def check_batch(model: UserModel, batch: UserBatch) -> None:
    """Raise :class:`DataError` when a batch does not fit the model's fields and vocabularies."""
    n_cont = sum(1 for f in model.fields if f.kind == "continuous")
    if batch.continuous.dim() != 2 or batch.continuous.shape[1] != n_cont:
        raise DataError(
            f"continuous features have shape {tuple(batch.continuous.shape)}, "
            f"the model expects (B, {n_cont})"
        )
    b = len(batch)
    for f in model.fields:
        if f.name in model.config.exclude_fields:
            continue
        if f.kind == "univalent":
            codes = batch.univalent.get(f.name)
            if codes is None or codes.shape != (b,):
                raise DataError(f"field {f.name!r}: missing or not one code per user")
        elif f.kind == "multivalent":
            bag = batch.multivalent.get(f.name)
            if bag is None or bag[1].shape != (b,):
                raise DataError(f"field {f.name!r}: missing or not one offset per user")
            codes = bag[0]
        else:
            continue
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= f.vocab_size):
            raise DataError(
                f"field {f.name!r}: codes must be in [0, {f.vocab_size - 1}] "
                f"(0 = OOV), got [{int(codes.min())}, {int(codes.max())}]"
            )


def _user_indices(ds: EncodedDataset, users: np.ndarray | None) -> np.ndarray:
    if users is None:
        return np.arange(ds.n_users)
    idx = np.asarray(users, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= ds.n_users):
        raise DataError(
            f"user indices must be in [0, {ds.n_users - 1}] for dataset {ds.name!r}, "
            f"got [{idx.min()}, {idx.max()}]"
        )
    return idx


@torch.no_grad()
def embed_batch(model: UserModel, batch: UserBatch) -> np.ndarray:
    """Universal embeddings of one batch, float32 (B, d). Validates codes first."""
    check_batch(model, batch)
    model.tower.eval()
    return model.tower(batch).float().numpy()  # (B, d)


def embed_users(
    model: UserModel,
    ds: EncodedDataset,
    users: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """Universal embeddings of dataset users, float32 (B, d).

    Args:
        model: the trained stage-1 model.
        ds: the encoded dataset the users come from (same fields as the model).
        users: int (B,) user indices; ``None`` = all users in index order.
        exclude_items: optional int (B,) item per row removed from the item-history bag
            (-1 = none), e.g. the target item of a (user, item) training example.
        batch_size: users embedded at once.
    """
    model.check_dataset(ds)
    idx = _user_indices(ds, users)
    if exclude_items is not None and np.shape(exclude_items) != idx.shape:
        raise DataError(f"exclude_items has shape {np.shape(exclude_items)}, users {idx.shape}")
    out = np.empty((idx.size, model.config.dim), dtype=np.float32)
    bar = tqdm(range(0, idx.size, batch_size), desc="embed users", disable=progress_disabled())
    for lo in bar:
        ex = None if exclude_items is None else np.asarray(exclude_items)[lo : lo + batch_size]
        batch = gather_users(ds, idx[lo : lo + batch_size], ex)
        out[lo : lo + batch_size] = embed_batch(model, batch)
    return out


@torch.no_grad()
def field_attention(
    model: UserModel, ds: EncodedDataset, users: np.ndarray | None = None, batch_size: int = 4096
) -> np.ndarray:
    """Per-field attention weights float32 (B, n_fields) (columns: ``model.field_names``)."""
    model.check_dataset(ds)
    idx = _user_indices(ds, users)
    out = np.empty((idx.size, len(model.field_names)), dtype=np.float32)
    model.tower.eval()
    for lo in range(0, idx.size, batch_size):
        batch = gather_users(ds, idx[lo : lo + batch_size])
        out[lo : lo + batch_size] = model.tower.field_attention(batch).numpy()
    return out
