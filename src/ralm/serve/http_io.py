"""HTTP plumbing of the API: body cap, strict JSON, bearer tokens, metrics, last-resort 500s.

- :class:`ObserveMiddleware` (outermost ASGI layer) reads the request body into memory up
  to ``max_body_bytes`` (declared ``content-length`` or chunked: either way 413 above the
  cap, before any parsing), records latency and status of EVERY answer in
  ``ralm_requests_total`` (500s included), and turns an exception that escaped every
  handler into one logged traceback and a JSON 500; the connection stays usable.
- :class:`StrictJSONRequest` parses bodies with orjson: only UTF-8, no lone surrogates, no
  integers beyond 64 bits that would overflow a float, no NaN/Infinity, nesting depth at
  most 1024. A parse error is a ``json.JSONDecodeError`` (FastAPI answers 422 and
  :func:`field_errors` names the location as ``body`` with line and column).
- :func:`route_class` makes routes that check the bearer token of a protected route
  BEFORE the body is read or parsed, and hand the endpoint a :class:`StrictJSONRequest`.
- :class:`FastJSONResponse` renders with orjson.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

import orjson
from fastapi import HTTPException, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ralm.serve.metrics import ServiceMetrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTES = ("/recommend", "/clicks", "/healthz", "/metrics", "/admin/recluster", "/docs")
UNAUTHORIZED = "authorization: a valid bearer token is required"

bearer = HTTPBearer(auto_error=False, description="Token of the write endpoints.")


class FastJSONResponse(JSONResponse):
    """A JSON response rendered by orjson (several times faster than ``json.dumps``)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(code: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """The :class:`~ralm.serve.schemas.ErrorOut` body every error answer has."""
    return FastJSONResponse({"detail": detail}, status_code=code, headers=headers)


def token_ok(token: str | None, authorization: str | None) -> bool:
    """Whether ``Authorization`` carries ``token`` (scheme ``Bearer``, any case; RFC 7235)."""
    if token is None:
        return True
    if not authorization:
        return False
    scheme, _, cred = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        cred.strip().encode("utf-8", "surrogateescape"), token.encode()
    )


class StrictJSONRequest(Request):
    """A request whose ``json()`` is orjson's strict parser."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = orjson.loads(body)
            except orjson.JSONDecodeError as e:  # a json.JSONDecodeError: FastAPI says 422
                raise json.JSONDecodeError(e.msg, e.doc, e.pos) from None
        return self._json


def route_class(token: str | None) -> type[APIRoute]:
    """Routes that check the token first (protected routes) and parse JSON strictly.

    A route is protected when one of its dependencies is :func:`require_token`. Unknown
    query parameters are a 422 (as unknown body fields are).

    Args:
        token: the service's bearer token (None: nothing is protected).
    """

    class RalmRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            inner = super().get_route_handler()
            protected = token is not None and any(
                d.dependency is require_token for d in self.dependencies
            )

            allowed = {q.alias for q in self.dependant.query_params}

            async def handler(request: Request) -> Response:
                if protected and not token_ok(token, request.headers.get("authorization")):
                    return error_response(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
                unknown = sorted(set(request.query_params) - allowed)
                if unknown:  # strict like the bodies: a misspelt parameter is not ignored
                    errs = [{"field": q, "message": "unknown query parameter"} for q in unknown]
                    msg = "; ".join(f"{e['field']}: {e['message']}" for e in errs)
                    return FastJSONResponse({"detail": msg, "errors": errs}, status_code=422)
                return await inner(StrictJSONRequest(request.scope, request.receive))

            return handler

    return RalmRoute


def require_token(
    request: Request, _: HTTPAuthorizationCredentials | None = Security(bearer)
) -> None:
    """Dependency marking a protected route (documents the bearer scheme; the route class
    has checked the token before the body was read, this checks it again)."""
    token = getattr(request.app.state, "token", None)
    if not token_ok(token, request.headers.get("authorization")):
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


def field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """``{field, message}`` per error; a JSON syntax error is located by line and column."""
    out = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            pos = err.get("loc", ("body", 0))[-1]
            doc = exc.body if isinstance(exc.body, str | bytes) else None
            where = _line_col(doc, pos) if isinstance(pos, int) else ""
            msg = f"invalid JSON: {ctx.get('error', 'decode error')}{where}"
            out.append({"field": "body", "message": msg})
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        out.append({"field": field, "message": str(err.get("msg", "invalid"))})
    return out


def _line_col(doc: str | bytes | None, pos: int) -> str:
    if doc is None:
        return f" (at byte {pos})"
    head = doc[:pos]
    nl = b"\n" if isinstance(head, bytes) else "\n"
    line = head.count(nl) + 1  # type: ignore[arg-type]
    col = pos - (head.rfind(nl) + 1)  # type: ignore[arg-type]
    return f" (line {line}, column {col + 1})"


def route_label(path: str) -> str:
    """The metrics label of a request path (ids are not labels)."""
    if path.startswith("/items/"):
        return "/items/{item_id}"
    if path.startswith("/users/") and path.endswith("/features"):
        return "/users/{user_id}/features"
    return path if path in ROUTES else "other"


class _TooLarge(Exception):
    pass


class ObserveMiddleware:
    """ASGI middleware: body cap (413), request metrics, one logged 500 for escaped errors.

    Args:
        app: the wrapped application.
        metrics: where latency and status counts go.
        max_body_bytes: the request body cap.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = {"code": 500, "started": False}

        async def tracking_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                state["code"], state["started"] = msg["status"], True
            await send(msg)

        try:
            replay = await self._buffered(scope, receive)
        except _TooLarge:
            await self._reply(send, 413, f"request body larger than {self.limit} bytes")
            self._observe(scope, 413, t0)
            return
        try:
            await self.app(scope, replay, tracking_send)
        except Exception as e:  # last resort: one traceback, a JSON 500, the server lives on
            log.error(
                "unhandled error in %s %s", scope.get("method"), scope.get("path"), exc_info=e
            )
            if not state["started"]:
                await self._reply(send, 500, f"internal error: {type(e).__name__}")
            state["code"] = 500
        self._observe(scope, int(state["code"]), t0)

    async def _buffered(self, scope: Scope, receive: Receive) -> Receive:
        """The whole body read (at most ``limit`` bytes) and a ``receive`` that replays it."""
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                raise _TooLarge
        parts: list[bytes] = []
        seen = 0
        first: Message | None = None
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # disconnect: let the app see it
                first = msg
                break
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                raise _TooLarge
            parts.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(parts)
        done = False

        async def replay() -> Message:
            nonlocal done
            if not done:
                done = True
                if first is not None:
                    return first
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    @staticmethod
    async def _reply(send: Send, code: int, detail: str) -> None:
        body = orjson.dumps({"detail": detail})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _observe(self, scope: Scope, code: int, t0: float) -> None:
        route = route_label(scope.get("path", ""))
        self.metrics.request_latency.observe(time.perf_counter() - t0, route=route)
        self.metrics.requests.inc(route=route, status=str(code))
