"""Every error path answers in the seed's shape, with the right status and code."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import Api, make_key, open_meta
from kaie_analytics.config import Settings

WF = "/v1/analytics/workflows/wf"
PERF = "/v1/analytics/workflows/wf/performance"


def assert_error_shape(body: dict[str, Any], code: str) -> dict[str, Any]:
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"code", "message", "details", "field"}
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    return err


@pytest.fixture
def with_workflow(api: Api) -> Api:
    api.send([{"type": "execution.started", "timestamp": "2024-01-01T00:00:00Z",
               "workflow_id": "wf", "execution_id": "x", "channel": "sms"}])  # fmt: skip
    return api


CASES = [
    # (method, path, params/body, status, code, field)
    ("get", WF, {"start_date": "2024-02-01", "end_date": "2024-01-01"}, 400,
     "INVALID_DATE_RANGE", "end_date"),
    ("get", WF, {"start_date": "yesterday"}, 400, "INVALID_DATE_RANGE", "start_date"),
    ("get", WF, {"end_date": "2024-13-01"}, 400, "INVALID_DATE_RANGE", "end_date"),
    ("get", WF, {"start_date": "2022-01-01", "end_date": "2024-01-01"}, 400,
     "INVALID_DATE_RANGE", "start_date"),
    ("get", WF, {"metrics": "total_executions,bogus"}, 400, "INVALID_METRICS", "metrics"),
    ("get", WF, {"granularity": "minute"}, 422, "INVALID_GRANULARITY", "granularity"),
    ("get", WF, {"timezone": "Mars/Olympus"}, 400, "INVALID_PARAMETER", "timezone"),
    ("get", WF, {"group_by": "planet"}, 400, "INVALID_PARAMETER", "group_by"),
    ("get", PERF, {"include_nodes": "maybe"}, 400, "INVALID_PARAMETER", "include_nodes"),
    ("get", PERF, {"start_date": "2024-02-01", "end_date": "2024-01-01"}, 400,
     "INVALID_DATE_RANGE", "end_date"),
    ("get", "/v1/analytics/workflows/missing", {}, 404, "WORKFLOW_NOT_FOUND", "workflow_id"),
    ("get", "/v1/analytics/workflows/missing/performance", {}, 404, "WORKFLOW_NOT_FOUND",
     "workflow_id"),
    ("get", "/v1/nowhere", {}, 404, "NOT_FOUND", None),
    ("delete", "/v1/events", {}, 405, "METHOD_NOT_ALLOWED", None),
    ("post", "/v1/events", b"nope", 400, "INVALID_REQUEST", "body"),
    ("put", "/v1/workflows/wf", {"nom": "x"}, 400, "INVALID_PARAMETER", None),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "arg", "status", "code", "field"), CASES)
def test_error_paths(
    with_workflow: Api, method: str, path: str, arg: Any, status: int, code: str, field: str | None
) -> None:
    api = with_workflow
    if method == "get":
        r = api.get(path, params=arg)
    elif method == "post":
        r = api.post(path, content=arg, headers={"Content-Type": "application/json"})
    elif method == "put":
        r = api.put(path, json=arg)
    else:
        r = api.client.request(method.upper(), path, headers=api.headers)
    assert r.status_code == status, r.text
    err = assert_error_shape(r.json(), code)
    if field is not None:
        assert err["field"] == field
    if code == "INVALID_METRICS":
        assert "total_executions" in err["details"]  # lists the valid names


def test_auth_errors(client: TestClient, settings: Settings) -> None:
    r = client.get("/v1/workflows")
    assert r.status_code == 401
    assert_error_shape(r.json(), "UNAUTHORIZED")
    r = client.get("/v1/workflows", headers={"Authorization": "Bearer kaie_00000000_nope"})
    assert r.status_code == 401
    read_only = make_key(settings, "acme", "analytics:read")
    r = client.post("/v1/events", json={"events": []},
                    headers={"Authorization": f"Bearer {read_only}"})  # fmt: skip
    assert r.status_code == 403
    assert_error_shape(r.json(), "FORBIDDEN")
    writer = make_key(settings, "acme", "events:write")
    r = client.get(WF, headers={"Authorization": f"Bearer {writer}"})
    assert r.status_code == 403


def test_other_tenants_workflow_is_not_found(with_workflow: Api, other_api: Api) -> None:
    r = other_api.get(WF)
    assert r.status_code == 404
    assert_error_shape(r.json(), "WORKFLOW_NOT_FOUND")


def test_revoked_key_is_refused(client: TestClient, settings: Settings) -> None:
    key = make_key(settings, "acme")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/workflows", headers=headers).status_code == 200
    meta = open_meta(settings)
    assert meta.revoke_key(key.split("_")[0] + "_" + key.split("_")[1]) == 1
    meta.db.close()
    client.app.state.keys.clear()  # type: ignore[attr-defined]  # skip the 2 s trust window
    r = client.get("/v1/workflows", headers=headers)
    assert r.status_code == 401


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/events" in spec["paths"]
    assert "/v1/analytics/workflows/{workflow_id}" in spec["paths"]
    assert client.get("/docs").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
