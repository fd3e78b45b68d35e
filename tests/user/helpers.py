"""Small configs shared by the stage-1 tests."""

from __future__ import annotations

from pathlib import Path

from ralm.data.encoded import EncodedDataset
from ralm.user.checkpoint import UserModel
from ralm.user.config import UserModelConfig, UserTrainConfig

BASE: dict[str, object] = {
    "dim": 16,
    "attention_units": 8,
    "mlp_hidden": [32],
    "epochs": 2,
    "batch_size": 128,
    "eval_k": 10,
    "seed": 0,
}


def tiny_configs(**kw: object) -> tuple[UserModelConfig, UserTrainConfig]:
    """(model, training) configs of a tiny run; ``kw`` may mix fields of both."""
    merged = {**BASE, **kw}
    unknown = set(merged) - set(UserModelConfig.model_fields) - set(UserTrainConfig.model_fields)
    assert not unknown, unknown
    model = {k: v for k, v in merged.items() if k in UserModelConfig.model_fields}
    train = {k: v for k, v in merged.items() if k in UserTrainConfig.model_fields}
    return UserModelConfig(**model), UserTrainConfig(**train)  # type: ignore[arg-type]


def tiny_config(**kw: object) -> UserModelConfig:
    """The model config of a tiny run."""
    return tiny_configs(**kw)[0]


def tiny_train(**kw: object) -> UserTrainConfig:
    """The training config of a tiny run."""
    return tiny_configs(**kw)[1]


def train_tiny(
    ds: EncodedDataset, out_dir: Path | None = None, *, resume: bool = False, **kw: object
) -> UserModel:
    """``train_user_model`` with the tiny configs built from ``kw``."""
    from ralm.user.train import train_user_model

    cfg, tc = tiny_configs(**kw)
    return train_user_model(ds, cfg, out_dir, tc, resume=resume)
