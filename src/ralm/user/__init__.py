"""Stage 1: user representation learning (feature embedding, attention merge, sampled softmax).

Public API (contract 2 in docs/ARCHITECTURE.md)::

    from ralm.user import (UserModelConfig, UserTrainConfig, train_user_model,
                           load_user_model, embed_users)
    model = train_user_model(ds, UserModelConfig(), "runs/x/user", UserTrainConfig(epochs=10))
    emb = embed_users(model, ds)  # (n_users, 128) float32
"""

from ralm.user.checkpoint import UserModel, load_user_model
from ralm.user.config import UserModelConfig, UserTrainConfig
from ralm.user.embed import embed_batch, embed_users, field_attention
from ralm.user.sampled_softmax import sampled_softmax_loss
from ralm.user.sampler import LogUniformSampler
from ralm.user.task import UserTrainBatch, UserTrainTask
from ralm.user.tower import UserItemModel, UserTower
from ralm.user.train import train_user_model

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
