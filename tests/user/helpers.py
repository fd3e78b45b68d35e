"""Small configs shared by the stage-1 tests."""

from __future__ import annotations

from ralm.user.config import UserModelConfig


def tiny_config(**kw: object) -> UserModelConfig:
    base: dict[str, object] = {
        "dim": 16,
        "attention_units": 8,
        "mlp_hidden": [32],
        "epochs": 2,
        "batch_size": 128,
        "eval_k": 10,
        "seed": 0,
    }
    base.update(kw)
    return UserModelConfig(**base)  # type: ignore[arg-type]
