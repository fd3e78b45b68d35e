"""HTTP layer in-process (TestClient): validation names the field, auth, metrics, docs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ralm.serve.app import create_app

from .conftest import background_clicks, make_service

AUTH = {"Authorization": "Bearer t0k"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    svc = make_service(tmp_path, token="t0k", max_n=50, max_clicks_per_request=100)
    svc.add_clicks(background_clicks())
    with TestClient(create_app(svc), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u1", "n": 51}, "n"),
        ({"user_id": "u1", "n": 0}, "n"),
        ({"user_id": "u1", "n": "3"}, "n"),
        ({"user_id": 5}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u1", "exclude": "i1"}, "exclude"),
        ({"user_id": "u1", "colour": "red"}, "colour"),
        ({"features": {"group": {"nested": 1}}}, "features.group"),
        ({}, "user_id"),
        ([], "body"),
    ],
)
def test_bad_recommend_bodies_are_422_naming_the_field(
    client: TestClient, body: object, field: str
) -> None:
    r = client.post("/recommend", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_malformed_and_oversized(client: TestClient) -> None:
    r = client.post(
        "/recommend", content=b"{bad json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "json" in r.json()["detail"].lower()
    big = {"clicks": [{"user_id": "u1", "item_id": "x"}] * 101}
    r = client.post("/clicks", json=big, headers=AUTH)
    assert r.status_code == 422 and "clicks" in r.json()["detail"]
    r = client.post("/clicks", content=b"x" * (9 << 20), headers={**AUTH, "content-type": "a/b"})
    assert r.status_code == 413


def test_unknown_user_and_feature_errors(client: TestClient) -> None:
    r = client.post("/recommend", json={"user_id": "nobody"})
    assert r.status_code == 404 and "user_id" in r.json()["detail"]
    r = client.post("/recommend", json={"features": {"group": "purple"}})
    assert r.status_code == 422 and "features.group" in r.json()["detail"]
    assert client.get("/items/nope").status_code == 404


def test_clicks_need_the_token_and_then_serve(client: TestClient) -> None:
    one = {"clicks": [{"user_id": "u2", "item_id": "brand-new", "ts": 1.5}]}
    assert client.post("/clicks", json=one).status_code == 401
    assert (
        client.post("/clicks", json=one, headers={"Authorization": "Bearer no"}).status_code == 401
    )
    r = client.post("/clicks", json=one, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"accepted": 1, "new_seeds": 1}
    bad_ts = {"clicks": [{"user_id": "u2", "item_id": "x", "ts": -1}]}
    assert client.post("/clicks", json=bad_ts, headers=AUTH).status_code == 422
    assert client.post("/admin/recluster?kind=full").status_code == 401
    r = client.post("/admin/recluster?kind=full", headers=AUTH)
    assert r.status_code == 200 and r.json()["items"] == 1
    r = client.post("/clicks", json={"clicks": [{"user_id": "u2", "item_id": "news/2026/x"}]},
                    headers=AUTH)  # fmt: skip
    assert r.status_code == 200
    assert client.get("/items/news/2026/x").json()["n_seeds"] == 1  # ids may contain "/"
    info = client.get("/items/brand-new").json()
    assert info["n_seeds"] == 1 and info["in_index"] and not info["servable"]
    assert client.post("/admin/recluster?kind=nope", headers=AUTH).status_code == 422


def test_recommend_health_metrics_docs(client: TestClient) -> None:
    r = client.post("/recommend", json={"user_id": "u0", "n": 5, "exclude": ["item-g0-0"]})
    assert r.status_code == 200
    body = r.json()
    assert len(body["items"]) == 5 and body["user"] == "known"
    assert all(0.0 < it["pctr"] < 1.0 for it in body["items"])
    assert "item-g0-0" not in [it["item_id"] for it in body["items"]]
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["index_version"] == body["index_version"]
    text = client.get("/metrics").text
    assert 'ralm_requests_total{route="/recommend",status="200"} 1' in text
    assert "ralm_scoring_batch_size_count 1" in text
    assert client.get("/docs").status_code == 200
    assert "/recommend" in client.get("/openapi.json").json()["paths"]
