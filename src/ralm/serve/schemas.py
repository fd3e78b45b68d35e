"""Request and response bodies of the HTTP API (pydantic, strict: wrong types are 422).

Request models are built per service by :func:`request_models` from the
:class:`ServeConfig` limits, so the OpenAPI schema states the real bounds (id and string
lengths, number of features, multivalent list length, exclude list, clicks per request,
``n`` and the latest accepted ``ts``) and every bound is checked while parsing, before any
embedding or store work. Response and error models are static.

(No ``from __future__ import annotations``: the request models are created at run time
from local types.)
"""

import math
import time
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ralm.serve.config import ServeConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ---- responses ---------------------------------------------------------------------------
class FieldError(BaseModel):
    """One field that failed validation."""

    field: str = Field(description="Dotted location of the field (``body`` for the whole body).")
    message: str = Field(description="What is wrong with it.")


class ErrorOut(BaseModel):
    """Body of every 4xx/5xx answer; ``errors`` lists the fields of a 422."""

    detail: str = Field(description="One-line message naming the field or the cause.")
    errors: list[FieldError] | None = Field(
        None, description="Per-field errors (422 validation errors only)."
    )


class Recommended(BaseModel):
    """One recommended item."""

    item_id: str
    pctr: float = Field(ge=0.0, le=1.0, description="Predicted click-through rate.")
    score: float = Field(
        description=(
            "Raw look-alike score: alpha cos(E_u, E_global) + beta cos(E_u, E_local) in "
            "[-1, 1], plus the audience-size prior gamma log(1 + n_seeds) >= 0 when the "
            "model uses it, so it can exceed 1."
        )
    )


class RecommendOut(BaseModel):
    """Top-n items, best first, and the index version that scored them."""

    items: list[Recommended]
    index_version: int
    user: str = Field(description="How the user was embedded: known, features, stored-features.")


class ClicksOut(BaseModel):
    """Acknowledgement: the clicks are durably stored."""

    accepted: int
    new_seeds: int


class FeaturesOut(BaseModel):
    """Acknowledgement: the user's features are validated and durably stored."""

    user_id: str
    stored: bool


class ItemOut(BaseModel):
    """GET /items/{item_id}: what the service knows about one item."""

    item_id: str
    n_seeds: int
    last_click: float | None
    pending_recluster: bool
    index_version: int
    in_index: bool
    servable: bool
    clustered_seeds: int
    cluster_sizes: list[int]
    last_recluster: float | None
    first_seen: float | None = None  # the item's first click (unix time; None = not known)
    prior_boost: float = 1.0  # the young-item factor of its seed count in the prior now


class HealthOut(BaseModel):
    """GET /healthz."""

    status: str = Field(description="ok, or degraded after a failed re-clustering cycle.")
    role: str = Field(
        description="leader (this process re-clusters) or follower (a replica serving the "
        "versions the leader publishes)."
    )
    index_version: int = Field(description="The index version this process serves.")
    published_version: int | None = Field(
        description="Replicas: the version the shared pointer names (None: one process)."
    )
    items: int
    servable_items: int
    last_full_recluster_s: float | None
    recluster_error: str | None
    uptime_s: float


class ReclusterOut(BaseModel):
    """POST /admin/recluster: report of the cycle."""

    kind: str
    items: int
    seeds: int
    seconds: float
    version: int | None
    index_version: int


# ---- requests ----------------------------------------------------------------------------
class RecommendBase(_Strict):
    """POST /recommend: a known ``user_id``, raw ``features`` of a new user, or both.

    A recommend never writes: features given here are used for this request only (store
    them with ``PUT /users/{user_id}/features``).
    """

    @model_validator(mode="after")
    def _who(self) -> "RecommendBase":
        if getattr(self, "user_id", None) is None and getattr(self, "features", None) is None:
            raise ValueError("give user_id, features, or both")
        return self


@dataclass(frozen=True)
class RequestModels:
    """The request models of one service (bounds from its config)."""

    recommend: type[BaseModel]
    click: type[BaseModel]
    clicks: type[BaseModel]
    features: type[BaseModel]


def request_models(cfg: ServeConfig) -> RequestModels:
    """Request models bounded by ``cfg`` (see :class:`ServeConfig` for every limit).

    Args:
        cfg: the service configuration.
    """
    Id = Annotated[str, Field(min_length=1, max_length=cfg.max_id_length)]
    Text = Annotated[str, Field(max_length=cfg.max_string_length)]
    Scalar = Text | int | float | bool
    Values = Annotated[list[Scalar], Field(max_length=cfg.max_feature_values)]
    Features = Annotated[
        dict[Id, Scalar | Values | None],
        Field(
            max_length=cfg.max_features,
            description=(
                "Raw feature values (field -> value or list of values); unknown values are OOV."
            ),
        ),
    ]
    skew = cfg.max_clock_skew_s

    def _ts(cls: Any, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, float):
            if not math.isfinite(v) or v < 0:
                raise ValueError("must be a finite, non-negative unix time")
            if v > time.time() + skew:
                raise ValueError(f"must not be more than {skew:g} s in the future")
        return v

    recommend = create_model(
        "RecommendIn",
        __base__=RecommendBase,
        user_id=(Id | None, Field(None, description="Raw id of a known user.")),
        features=(Features | None, None),
        n=(int, Field(10, ge=1, le=cfg.max_n, description="How many items to return.")),
        exclude=(
            list[Id],
            Field(
                default_factory=list,
                max_length=cfg.max_exclude,
                description="Item ids never to return.",
            ),
        ),
        exclude_clicked=(bool, Field(False, description="Also exclude items the user clicked.")),
    )
    click = create_model(
        "ClickIn",
        __base__=_Strict,
        __doc__="One click event.",
        __validators__={"_ts": field_validator("ts", mode="before")(_ts)},
        user_id=(Id, Field(description="Raw user id.")),
        item_id=(Id, Field(description="Raw item id; created on its first click.")),
        ts=(
            float | None,
            Field(
                None,
                ge=0.0,
                description=(f"Event time (unix seconds, at most now + {skew:g} s); default: now."),
            ),
        ),
        features=(
            Features | None,
            Field(None, description="Raw features of a user first seen online (embeddable)."),
        ),
    )
    clicks = create_model(
        "ClicksIn",
        __base__=_Strict,
        __doc__="POST /clicks: a batch of click events.",
        clicks=(
            list[click],  # type: ignore[valid-type]
            Field(min_length=1, max_length=cfg.max_clicks_per_request, description="Events."),
        ),
    )
    features = create_model(
        "UserFeaturesIn",
        __base__=_Strict,
        __doc__="PUT /users/{user_id}/features: the raw features to remember for a user.",
        features=(Features, ...),
    )
    return RequestModels(recommend, click, clicks, features)
