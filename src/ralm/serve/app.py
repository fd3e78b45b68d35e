"""The HTTP API (FastAPI): recommend, clicks, user features, items, health, metrics.

Docs at ``/docs``, schema at ``/openapi.json``; every answer documented there is the real
one (the test suite fuzzes the app against its own schema). Every client mistake is a 4xx
whose ``detail`` names the field: 422 validation (strict types, bounds from
:class:`~ralm.serve.config.ServeConfig`, malformed / non-UTF-8 / too deeply nested JSON),
401 token, 404 unknown user/item, 413 body too large. An unexpected error is logged once,
counted in ``ralm_requests_total`` and answered 500 without stopping the server. Write
endpoints (``/clicks``, ``PUT /users/{user_id}/features``, ``/admin/*``) require
``Authorization: Bearer <token>`` when the service has a token; it is checked before the
body is parsed. ``POST /recommend`` never writes.

(No ``from __future__ import annotations`` here: FastAPI must see the request-model
classes built at run time by :func:`request_models` as real types, not strings.)
"""

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse

from ralm.errors import DataError, RalmError
from ralm.serve.http_io import (
    FastJSONResponse,
    ObserveMiddleware,
    error_response,
    field_errors,
    require_token,
    route_class,
)
from ralm.serve.schemas import (
    ClicksOut,
    ErrorOut,
    FeaturesOut,
    HealthOut,
    ItemOut,
    ReclusterOut,
    RecommendOut,
    request_models,
)
from ralm.serve.service import RalmService, UnknownItemError, UnknownUserError
from ralm.serve.store import Click

log = logging.getLogger(__name__)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        401: "Missing or wrong bearer token.",
        404: "Unknown user (no features) or item.",
        413: "Request body larger than max_body_bytes.",
        422: "Validation error (body, path or query); `errors` names each field.",
        500: "Unexpected error (logged).",
    }
    every = (413, 422, 500)  # 422 too: an unknown query parameter is refused on any route
    return {c: {"model": ErrorOut, "description": what[c]} for c in sorted({*codes, *every})}


def create_app(service: RalmService, start_service: bool = True) -> FastAPI:
    """The FastAPI application serving ``service``.

    Args:
        service: the service (its background job starts with the app when ``start_service``).
        start_service: call ``service.start()`` / ``service.close()`` in the app lifespan.
    """
    cfg = service.config
    models = request_models(cfg)
    RecommendIn, ClicksIn, FeaturesIn = models.recommend, models.clicks, models.features

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if start_service:
            await run_in_threadpool(service.start)
        yield
        if start_service:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="ralm",
        description="RALM real-time look-alike recommendation service.",
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
    )
    app.state.token = cfg.token
    app.router.route_class = route_class(cfg.token)
    auth = [Depends(require_token)]

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errs = field_errors(exc)
        msg = "; ".join(f"{e['field']}: {e['message']}" for e in errs)
        return FastJSONResponse({"detail": msg, "errors": errs}, status_code=422)

    @app.exception_handler(RalmError)
    async def _ralm_error(_: Request, exc: RalmError) -> Response:
        if isinstance(exc, UnknownUserError | UnknownItemError):
            code = 404
        elif isinstance(exc, DataError):
            code = 422
        else:
            code = 400
        return error_response(code, str(exc))

    @app.post("/recommend", response_model=RecommendOut, responses=_responses(404, 422))
    async def recommend(body: RecommendIn) -> Response:  # type: ignore[valid-type]
        """Top-n items (with pCTR) for a known user and/or a new user's raw features.

        Read-only: features given here are used for this request and never stored.
        """
        res = await service.arecommend(
            user_id=body.user_id,  # type: ignore[attr-defined]
            features=body.features,  # type: ignore[attr-defined]
            n=body.n,  # type: ignore[attr-defined]
            exclude=body.exclude,  # type: ignore[attr-defined]
            exclude_clicked=body.exclude_clicked,  # type: ignore[attr-defined]
        )
        items = [{"item_id": r.item_id, "pctr": r.pctr, "score": r.score} for r in res.items]
        return FastJSONResponse({"items": items, "index_version": res.version, "user": res.user})

    @app.post(
        "/clicks", response_model=ClicksOut, dependencies=auth, responses=_responses(401, 422)
    )
    def clicks(body: ClicksIn) -> ClicksOut:  # type: ignore[valid-type]
        """Append click events to their items' seeds; answered once durably stored."""
        now = time.time()
        events = body.clicks  # type: ignore[attr-defined]
        feats = {c.user_id: c.features for c in events if c.features is not None}
        batch = [Click(c.user_id, c.item_id, now if c.ts is None else c.ts) for c in events]
        added = service.add_clicks(batch, feats or None)
        return ClicksOut(accepted=len(batch), new_seeds=added)

    @app.put(
        "/users/{user_id}/features",
        response_model=FeaturesOut,
        dependencies=auth,
        responses=_responses(401, 422),
    )
    def user_features(
        body: FeaturesIn,  # type: ignore[valid-type]
        user_id: str = Path(min_length=1, max_length=cfg.max_id_length),
    ) -> FeaturesOut:
        """Validate and durably store a user's raw features (replacing earlier ones).

        A user the model does not know is embedded from them (its recommends without
        features, and its clicks as seeds of the items it clicked).
        """
        service.set_user_features(user_id, body.features)  # type: ignore[attr-defined]
        return FeaturesOut(user_id=user_id, stored=True)

    @app.get("/items/{item_id:path}", response_model=ItemOut, responses=_responses(404, 422))
    def item(item_id: str = Path(min_length=1, max_length=cfg.max_id_length)) -> Any:
        """Seed count, cluster sizes, servability and last re-cluster time of one item."""
        return service.item_info(item_id)

    @app.get("/healthz", response_model=HealthOut, responses=_responses())
    def healthz() -> Any:
        """Liveness and index summary."""
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse, responses=_responses())
    def metrics() -> PlainTextResponse:
        """Prometheus text exposition."""
        return PlainTextResponse(
            service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.post(
        "/admin/recluster",
        response_model=ReclusterOut,
        dependencies=auth,
        responses=_responses(401, 422),
    )
    def recluster(
        kind: str = Query("full", pattern="^(full|fast)$", description="full or fast cycle"),
    ) -> ReclusterOut:
        """Run a re-clustering cycle now and return its report."""
        r = service.reclusterer.run_full() if kind == "full" else service.reclusterer.run_fast()
        return ReclusterOut(
            kind=r.kind,
            items=r.n_items,
            seeds=r.n_seeds,
            seconds=r.seconds,
            version=r.version,
            index_version=service.holder.version,
        )

    app.add_middleware(
        ObserveMiddleware, metrics=service.metrics, max_body_bytes=cfg.max_body_bytes
    )
    return app


def run_server(
    service: RalmService, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Serve ``service`` with uvicorn until interrupted (one process, threads share memory)."""
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, access_log=False)
