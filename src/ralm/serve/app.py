"""The HTTP API (FastAPI): recommend, clicks, items, health, metrics; docs at ``/docs``.

Every client mistake is a 4xx whose message names the field (422 validation, 401 token,
404 unknown user/item, 413 body too large); unexpected errors are logged and answered
500 without stopping the server. Write endpoints (``/clicks``, ``/admin/*``) require
``Authorization: Bearer <token>`` when the service has a token.

(No ``from __future__ import annotations`` here: FastAPI must see the request-model
classes built at run time by :func:`bounded_models` as real types, not strings.)
"""

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse

from ralm.errors import DataError, RalmError
from ralm.serve.schemas import ClicksOut, Recommended, RecommendOut, bounded_models
from ralm.serve.service import RalmService, UnknownItemError, UnknownUserError
from ralm.serve.store import Click

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTES = ("/recommend", "/clicks", "/healthz", "/metrics", "/admin/recluster", "/docs")


class _TooLarge(Exception):
    pass


def _route_label(path: str) -> str:
    if path.startswith("/items/"):
        return "/items/{item_id}"
    return path if path in ROUTES else "other"


class ObserveMiddleware:
    """ASGI middleware: request latency/status metrics and the request-body size cap."""

    def __init__(self, app: ASGIApp, service: RalmService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.service.config.max_body_bytes
        t0 = time.perf_counter()
        status = {"code": 500, "started": False}
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._reply_413(send, limit)
                self._observe(scope, 413, t0)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status["code"], status["started"] = msg["status"], True
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not status["started"]:
                await self._reply_413(send, limit)
            status["code"] = 413
        self._observe(scope, int(status["code"]), t0)

    @staticmethod
    async def _reply_413(send: Send, limit: int) -> None:
        body = f'{{"detail":"request body larger than {limit} bytes"}}'.encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _observe(self, scope: Scope, code: int, t0: float) -> None:
        route = _route_label(scope.get("path", ""))
        m = self.service.metrics
        m.request_latency.observe(time.perf_counter() - t0, route=route)
        m.requests.inc(route=route, status=str(code))


def _field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        out.append({"field": field, "message": str(err.get("msg", "invalid"))})
    return out


def create_app(service: RalmService, start_service: bool = True) -> FastAPI:
    """The FastAPI application serving ``service``.

    Args:
        service: the service (its background job starts with the app when ``start_service``).
        start_service: call ``service.start()`` / ``service.close()`` in the app lifespan.
    """
    cfg = service.config
    RecommendIn, ClicksIn = bounded_models(cfg)

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
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = _field_errors(exc)
        msg = "; ".join(f"{e['field']}: {e['message']}" for e in errs)
        return JSONResponse({"detail": msg, "errors": errs}, status_code=422)

    @app.exception_handler(RalmError)
    async def _ralm_error(_: Request, exc: RalmError) -> JSONResponse:
        if isinstance(exc, UnknownUserError | UnknownItemError):
            code = 404
        elif isinstance(exc, DataError):
            code = 422
        else:
            code = 400
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    def require_token(authorization: str | None = Header(None)) -> None:
        if cfg.token is None:
            return
        want = f"Bearer {cfg.token}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), want):
            raise HTTPException(
                401,
                "authorization: a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.post("/recommend", response_model=RecommendOut)
    async def recommend(body: RecommendIn) -> RecommendOut:  # type: ignore[valid-type]
        """Top-n items (with pCTR) for a known user and/or a new user's raw features."""
        res = await service.arecommend(
            user_id=body.user_id,  # type: ignore[attr-defined]
            features=body.features,  # type: ignore[attr-defined]
            n=body.n,  # type: ignore[attr-defined]
            exclude=body.exclude,  # type: ignore[attr-defined]
            exclude_clicked=body.exclude_clicked,  # type: ignore[attr-defined]
        )
        items = [Recommended(item_id=r.item_id, pctr=r.pctr, score=r.score) for r in res.items]
        return RecommendOut(items=items, index_version=res.version, user=res.user)

    @app.post("/clicks", response_model=ClicksOut, dependencies=[Depends(require_token)])
    def clicks(body: ClicksIn) -> ClicksOut:  # type: ignore[valid-type]
        """Append click events to their items' seeds; answered once durably stored."""
        now = time.time()
        events = body.clicks  # type: ignore[attr-defined]
        feats = {c.user_id: c.features for c in events if c.features is not None}
        batch = [Click(c.user_id, c.item_id, now if c.ts is None else c.ts) for c in events]
        added = service.add_clicks(batch, feats or None)
        return ClicksOut(accepted=len(batch), new_seeds=added)

    @app.get("/items/{item_id:path}")
    def item(item_id: str = Path(min_length=1, max_length=256)) -> dict[str, Any]:
        """Seed count, cluster sizes, servability and last re-cluster time of one item."""
        return service.item_info(item_id)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness and index summary."""
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus text exposition."""
        return PlainTextResponse(
            service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.post("/admin/recluster", dependencies=[Depends(require_token)])
    def recluster(
        kind: str = Query("full", pattern="^(full|fast)$", description="full or fast cycle"),
    ) -> dict[str, Any]:
        """Run a re-clustering cycle now and return its report."""
        r = service.reclusterer.run_full() if kind == "full" else service.reclusterer.run_fast()
        return {
            "kind": r.kind,
            "items": r.n_items,
            "seeds": r.n_seeds,
            "seconds": r.seconds,
            "version": r.version,
            "index_version": service.holder.version,
        }

    app.add_middleware(ObserveMiddleware, service=service)
    return app


def run_server(
    service: RalmService, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Serve ``service`` with uvicorn until interrupted (one process, threads share memory)."""
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, access_log=False)
