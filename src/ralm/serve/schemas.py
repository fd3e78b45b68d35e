"""Request and response bodies of the HTTP API (pydantic, strict: wrong types are 422)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ralm.serve.config import ServeConfig

Id = Annotated[str, Field(min_length=1, max_length=256)]
Scalar = str | int | float | bool
FeatureValue = Scalar | list[Scalar] | None
Features = Annotated[dict[Id, FeatureValue], Field(max_length=256)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendBase(_Strict):
    """POST /recommend: a known ``user_id``, raw ``features`` of a new user, or both."""

    user_id: Id | None = Field(None, description="Raw id of a known user.")
    features: Features | None = Field(
        None, description="Raw feature values (field -> value or list); unknown values are OOV."
    )
    n: int = Field(10, ge=1, description="How many items to return.")
    exclude: list[Id] = Field(default_factory=list, description="Item ids never to return.")
    exclude_clicked: bool = Field(False, description="Also exclude items the user clicked.")

    @model_validator(mode="after")
    def _who(self) -> RecommendBase:
        if self.user_id is None and self.features is None:
            raise ValueError("give user_id, features, or both")
        return self


class ClickIn(_Strict):
    """One click event."""

    user_id: Id = Field(description="Raw user id.")
    item_id: Id = Field(description="Raw item id; created on its first click.")
    ts: float | None = Field(None, description="Event time (unix seconds); default: now.")
    features: Features | None = Field(
        None, description="Raw features of a user first seen online (makes it embeddable)."
    )

    @field_validator("ts", mode="before")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, float) and (not math.isfinite(v) or v < 0):
            raise ValueError("must be a finite, non-negative unix time")
        return v


class ClicksBase(_Strict):
    """POST /clicks: a batch of click events."""

    clicks: list[ClickIn] = Field(min_length=1, description="Click events.")


class Recommended(BaseModel):
    """One recommended item."""

    item_id: str
    pctr: float = Field(description="Predicted click-through rate.")
    score: float = Field(description="Raw look-alike score in [-1, 1].")


class RecommendOut(BaseModel):
    """Top-n items, best first, and the index version that scored them."""

    items: list[Recommended]
    index_version: int
    user: str = Field(description="How the user was embedded: known, features, stored-features.")


class ClicksOut(BaseModel):
    """Acknowledgement: the clicks are durably stored."""

    accepted: int
    new_seeds: int


def bounded_models(cfg: ServeConfig) -> tuple[type[RecommendBase], type[ClicksBase]]:
    """Request models with the configured bounds (n, exclude list, clicks per request)."""
    rec = create_model(
        "RecommendIn",
        __base__=RecommendBase,
        n=(int, Field(10, ge=1, le=cfg.max_n, description="How many items to return.")),
        exclude=(
            list[Id],
            Field(default_factory=list, max_length=cfg.max_exclude, description="Never return."),
        ),
    )
    clicks = create_model(
        "ClicksIn",
        __base__=ClicksBase,
        clicks=(
            list[ClickIn],
            Field(min_length=1, max_length=cfg.max_clicks_per_request, description="Events."),
        ),
    )
    return rec, clicks
