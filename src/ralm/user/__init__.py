"""Stage 1: user representation learning (feature embedding, attention merge, sampled softmax).

Public API (contract 2 in docs/ARCHITECTURE.md)::

    from ralm.user import (UserModelConfig, UserTrainConfig, train_user_model,
                           load_user_model, embed_users)
    model = train_user_model(ds, UserModelConfig(), "runs/x/user", UserTrainConfig(epochs=10))
    emb = embed_users(model, ds)  # (n_users, 128) float32

The names are imported on first use (PEP 562), so ``ralm.user.config`` (what the CLI needs
to build ``ralm train user --help``) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ralm.user.checkpoint import UserModel, load_user_model
    from ralm.user.config import UserModelConfig, UserTrainConfig
    from ralm.user.embed import embed_batch, embed_users, field_attention
    from ralm.user.sampled_softmax import sampled_softmax_loss
    from ralm.user.sampler import LogUniformSampler
    from ralm.user.task import UserTrainBatch, UserTrainTask
    from ralm.user.tower import UserItemModel, UserTower
    from ralm.user.train import train_user_model

_EXPORTS = {
    "LogUniformSampler": "ralm.user.sampler",
    "UserItemModel": "ralm.user.tower",
    "UserModel": "ralm.user.checkpoint",
    "UserModelConfig": "ralm.user.config",
    "UserTower": "ralm.user.tower",
    "UserTrainBatch": "ralm.user.task",
    "UserTrainConfig": "ralm.user.config",
    "UserTrainTask": "ralm.user.task",
    "embed_batch": "ralm.user.embed",
    "embed_users": "ralm.user.embed",
    "field_attention": "ralm.user.embed",
    "load_user_model": "ralm.user.checkpoint",
    "sampled_softmax_loss": "ralm.user.sampled_softmax",
    "train_user_model": "ralm.user.train",
}

__all__ = [
    "LogUniformSampler",
    "UserItemModel",
    "UserModel",
    "UserModelConfig",
    "UserTower",
    "UserTrainBatch",
    "UserTrainConfig",
    "UserTrainTask",
    "embed_batch",
    "embed_users",
    "field_attention",
    "load_user_model",
    "sampled_softmax_loss",
    "train_user_model",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
