"""Hostile-client regressions of the HTTP API (issue 12): reads never write, bounded work,
no 500s from odd JSON, the documented status codes, token checked first."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ralm.serve.app import create_app
from ralm.serve.service import RalmService

from .conftest import background_clicks, make_service

AUTH = {"Authorization": "Bearer t0k"}
JSON = {"content-type": "application/json"}
LIMITS = {
    "max_id_length": 32,
    "max_string_length": 40,
    "max_features": 4,
    "max_feature_values": 8,
    "max_exclude": 5,
    "max_body_bytes": 64 * 1024,
    "max_clock_skew_s": 60.0,
}


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[RalmService]:
    s = make_service(tmp_path, token="t0k", **LIMITS)
    s.add_clicks(background_clicks())
    yield s


@pytest.fixture
def client(svc: RalmService) -> Iterator[TestClient]:
    with TestClient(create_app(svc), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def embed_calls(svc: RalmService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of the feature embedder (the heavy work a bound must come before)."""
    calls: list[int] = []
    emb = svc.model.embedder
    real = emb.embed_features

    def counting(records: Any) -> Any:
        calls.append(len(records))
        return real(records)

    monkeypatch.setattr(emb, "embed_features", counting)
    return calls


# ---- item 3: reads never write -----------------------------------------------------------
def test_recommend_with_features_stores_nothing(client: TestClient, svc: RalmService) -> None:
    r = client.post("/recommend", json={"user_id": "web-1", "features": {"group": "g1"}})
    assert r.status_code == 200 and r.json()["user"] == "features"
    assert svc.store.user_features(["web-1"]) == {}
    assert client.post("/recommend", json={"user_id": "web-1"}).status_code == 404


def test_features_endpoint_needs_the_token_validates_then_stores(
    client: TestClient, svc: RalmService
) -> None:
    url, body = "/users/web-2/features", {"features": {"group": "g2"}}
    assert client.put(url, json=body).status_code == 401
    assert client.put(url, json=body, headers={"Authorization": "Bearer no"}).status_code == 401
    bad = client.put(url, json={"features": {"group": "purple"}}, headers=AUTH)
    assert bad.status_code == 422 and "features.group" in bad.json()["detail"]
    assert svc.store.user_features(["web-2"]) == {}  # nothing stored on a bad value
    r = client.put(url, json=body, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"user_id": "web-2", "stored": True}
    assert svc.store.user_features(["web-2"]) == {"web-2": {"group": "g2"}}
    rec = client.post("/recommend", json={"user_id": "web-2", "n": 3})
    assert rec.status_code == 200 and rec.json()["user"] == "stored-features"
    same = client.post("/recommend", json={"features": {"group": "g2"}, "n": 3}).json()
    assert [i["item_id"] for i in rec.json()["items"]] == [i["item_id"] for i in same["items"]]


# ---- item 4: every list and string is bounded, before any heavy work ---------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u" * 33}, "user_id"),
        ({"features": {"group": "g" * 41}}, "features.group"),
        ({"features": {"group": ["g1"] * 9}}, "features.group"),
        ({"features": {f"f{i}": "g1" for i in range(5)}}, "features"),
        ({"features": {"k" * 33: "g1"}}, "features"),
        ({"user_id": "u1", "exclude": ["a"] * 6}, "exclude"),
        ({"user_id": "u1", "exclude": ["a" * 33]}, "exclude.0"),
    ],
)
def test_over_limit_bodies_are_422_before_embedding(
    client: TestClient, embed_calls: list[int], body: dict[str, Any], field: str
) -> None:
    r = client.post("/recommend", json=body)
    assert r.status_code == 422, r.text
    assert field in [e["field"].split(".[")[0] for e in r.json()["errors"]] or field in r.text
    assert embed_calls == []


def test_click_limits(client: TestClient, embed_calls: list[int]) -> None:
    long_id = {"clicks": [{"user_id": "u1", "item_id": "i" * 33}]}
    r = client.post("/clicks", json=long_id, headers=AUTH)
    assert r.status_code == 422 and "clicks.0.item_id" in r.json()["detail"]
    feats = {"clicks": [{"user_id": "n1", "item_id": "x", "features": {"group": ["g1"] * 9}}]}
    r = client.post("/clicks", json=feats, headers=AUTH)
    assert r.status_code == 422 and "clicks.0.features" in r.json()["detail"]
    assert embed_calls == []


def _chunks(total: int, size: int = 8192) -> Iterator[bytes]:
    yield b'{"features": {"group": ["'
    for _ in range(total // size):
        yield b"g" * size
    yield b'"]}}'


def test_chunked_body_over_the_cap_is_413(client: TestClient, embed_calls: list[int]) -> None:
    r = client.post("/recommend", content=_chunks(200 * 1024), headers=JSON)
    assert r.status_code == 413, r.text
    assert "64" in r.json()["detail"] or "65536" in r.json()["detail"]
    r = client.post("/recommend", content=_chunks(16 * 1024), headers=JSON)  # under: parsed
    assert r.status_code == 422 and embed_calls == []
    declared = client.post("/clicks", content=b"x" * (70 * 1024), headers={**AUTH, **JSON})
    assert declared.status_code == 413


# ---- items 6 and 9: odd JSON is a 422 naming the location, never a 500 -------------------
@pytest.mark.parametrize(
    "raw",
    [
        b'{"features": {"group": "\\ud800"}}',  # lone surrogate
        b'{"features": {"group": "g1", "age": 1' + b"0" * 400 + b"}}",  # 400-digit integer
        b'{"user_id": "u1", "n": 1e400}',
        b'{"user_id": "\xff\xfe"}',  # not UTF-8
        b"[" * 5000 + b"]" * 5000,  # deeply nested
        b'{"features": {"group": NaN}}',
        b'{"user_id": "u1",, }',
    ],
)
def test_bad_json_is_422_with_a_location(client: TestClient, raw: bytes) -> None:
    r = client.post("/recommend", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["field"] == "body" and "invalid JSON" in err["message"]
    assert "line 1, column" in err["message"]
    assert client.get("/healthz").status_code == 200


def test_huge_numbers_are_422_not_500(client: TestClient) -> None:
    big_n = client.post("/recommend", content=b'{"user_id": "u1", "n": 18446744073709551616}',
                        headers=JSON)  # fmt: skip
    assert big_n.status_code == 422 and "n" in big_n.json()["detail"]
    ts = b'{"clicks": [{"user_id": "u1", "item_id": "x", "ts": 1' + b"0" * 400 + b"}]}"
    assert client.post("/clicks", content=ts, headers={**AUTH, **JSON}).status_code == 422


def test_ts_in_the_future_is_refused(client: TestClient) -> None:
    import time

    for ts in (1e300, time.time() + 600):
        body = {"clicks": [{"user_id": "u1", "item_id": "x", "ts": ts}]}
        r = client.post("/clicks", json=body, headers=AUTH)
        assert r.status_code == 422 and "clicks.0.ts" in r.json()["detail"], r.text
    ok = {"clicks": [{"user_id": "u1", "item_id": "x", "ts": time.time() + 30}]}
    assert client.post("/clicks", json=ok, headers=AUTH).status_code == 200


def test_an_unexpected_error_is_one_log_a_counted_500_and_the_server_lives(
    client: TestClient, svc: RalmService, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    async def boom(**kw: object) -> None:
        raise RuntimeError("scorer on fire")

    monkeypatch.setattr(svc, "arecommend", boom)
    with caplog.at_level(logging.ERROR):
        r = client.post("/recommend", json={"user_id": "u1"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error: RuntimeError"}
    tracebacks = [rec for rec in caplog.records if rec.exc_info]
    assert len(tracebacks) == 1
    assert 'ralm_requests_total{route="/recommend",status="500"} 1' in client.get("/metrics").text
    assert client.get("/healthz").status_code == 200


# ---- item 10: the token scheme is case-insensitive and is checked first ------------------
@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_bearer_scheme_is_case_insensitive(client: TestClient, scheme: str) -> None:
    body = {"clicks": [{"user_id": "u1", "item_id": "x"}]}
    r = client.post("/clicks", json=body, headers={"Authorization": f"{scheme} t0k"})
    assert r.status_code == 200, r.text


def test_token_is_checked_before_the_body_is_parsed(client: TestClient) -> None:
    for path in ("/clicks", "/admin/recluster?kind=bogus"):
        r = client.post(path, content=b"{not json", headers=JSON)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.put("/users/a/features", content=b"{not json", headers=JSON)
    assert r.status_code == 401


# ---- item 9: the documentation is the behaviour ------------------------------------------
def test_openapi_error_schema_is_the_real_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/recommend"]["post"]
    ref = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    props = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]
    real = client.post("/recommend", json={"user_id": 5}).json()
    assert set(real) == set(props) == {"detail", "errors"}
    assert set(real["errors"][0]) == set(spec["components"]["schemas"]["FieldError"]["properties"])
    score = spec["components"]["schemas"]["Recommended"]["properties"]["score"]
    assert "[-1, 1]" not in score["description"].split("plus")[-1]
    assert "prior" in score["description"]
    assert "413" in op["responses"] and "401" in spec["paths"]["/clicks"]["post"]["responses"]


def test_unknown_query_parameters_are_422(client: TestClient) -> None:
    r = client.post("/admin/recluster?kind=fast&knd=full", headers=AUTH)
    assert r.status_code == 422 and r.json()["errors"] == [
        {"field": "knd", "message": "unknown query parameter"}
    ]
    assert client.get("/healthz?verbose=1").status_code == 422
    spec = client.get("/openapi.json").json()
    assert all("422" in op["responses"] for ops in spec["paths"].values() for op in ops.values())


def test_real_server_500_keeps_the_connection_and_logs_one_traceback(
    svc: RalmService, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """Under uvicorn: an escaped error is one logged traceback and a JSON 500, and the
    next request on the SAME keep-alive connection is answered (it used to be reset)."""
    import threading
    import time

    import httpx
    import uvicorn

    async def boom(**kw: object) -> None:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(svc, "arecommend", boom)
    server = uvicorn.Server(
        uvicorn.Config(create_app(svc, start_service=False), port=0, log_config=None)
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with (
            caplog.at_level(logging.ERROR),
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c,
        ):
            r = c.post("/recommend", json={"user_id": "u1"})
            assert r.status_code == 500 and r.json()["detail"].startswith("internal error")
            assert c.get("/healthz").status_code == 200  # same connection, still served
            assert c.post("/recommend", json={"user_id": "u1"}).status_code == 500
    finally:
        server.should_exit = True
        th.join(10)
    assert len([rec for rec in caplog.records if rec.exc_info]) == 2  # one per failed request
    assert svc.metrics.requests.value(route="/recommend", status="500") == 2
