"""Arbitrary values in every parameter and body field of every endpoint: never a 5xx.

Property-based (hypothesis): each example sets some parameters of one endpoint
to arbitrary text (with the edge cases that broke it once among the samples)
or, for JSON bodies, one field to an arbitrary JSON value. Every answer must be
below 500, and a non-2xx answer must be in the seed's error shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GENEROUS_LIMITS, make_key
from kaie_analytics.app import create_app
from kaie_analytics.config import Settings

EDGE_TEXT = [
    "", " ", "0001-01-01", "9999-12-31", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:00:00", "9999-12-31T23:59:59.999999", "2024-02-30", "2024-01-01T25:00:00Z",
    "Europe", "America/", "a" * 300, "\x00", "../../etc/passwd", "/etc/localtime", "UTC\x00",
    "²³", "١٢٣", "１２３", "-1", "1e309", "99999999999999999999", "true", "null", "[]", "{}",
    "hour", "minute", "total_executions,", ",,,", "channel,customer_segment", "🙂",
    "2024-01-01", "2024-12-31", "Europe/Paris", "+15551234567", "wf", "sms",
]  # fmt: skip
TEXT = st.one_of(st.sampled_from(EDGE_TEXT), st.text(max_size=40))
JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), TEXT
)
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=8,
)

PERIOD = ["start_date", "end_date", "timezone"]
GETS: dict[str, list[str]] = {
    "/v1/analytics/workflows/wf": [*PERIOD, "granularity", "metrics", "group_by"],
    "/v1/analytics/workflows/wf/performance": [*PERIOD, "include_nodes", "include_channels"],
    "/v1/analytics/customers/engagement": [*PERIOD, "customer_segment", "channel"],
    "/v1/analytics/customers/journey": [*PERIOD, "journey_type", "include_dropoffs"],
    "/v1/analytics/realtime": ["workflow_id", "channel", "include_system"],
    "/v1/workflows": [],
    "/v1/analytics/reports": [],
    "/v1/analytics/export": [],
}
REPORT = {
    "name": "r", "description": "d", "metrics": ["total_executions"], "format": "json",
    "filters": {"start_date": "2024-01-01", "end_date": "2024-01-31", "timezone": "UTC",
                "workflow_ids": ["wf"], "channels": ["sms"]},
    "group_by": ["channel"], "granularity": "day",
}  # fmt: skip
EXPORT = {
    "data_type": "executions", "format": "csv", "start_date": "2024-01-01",
    "end_date": "2024-01-31", "timezone": "UTC", "include_metadata": True,
    "filters": {"workflow_ids": ["wf"], "channels": ["sms"]},
}  # fmt: skip
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    s = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz"),
        rate_limits=GENEROUS_LIMITS,
        job_time_limit_s=5,
        allowed_hosts="testserver",
    )
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        headers = {"Authorization": f"Bearer {make_key(s, 'acme')}"}
        events = [
            {"type": "execution.started", "timestamp": "2024-01-05T10:00:00Z", "workflow_id": "wf",
             "execution_id": "x1", "channel": "sms", "customer_id": "c1"},
            {"type": "message.received", "timestamp": "2024-01-05T10:00:01Z", "customer_id": "c1",
             "channel": "sms", "workflow_id": "wf"},
            {"type": "journey.step", "timestamp": "2024-01-05T10:00:01Z", "journey_type": "j",
             "journey_id": "j1", "customer_id": "c1", "step": 1, "step_name": "one"},
        ]  # fmt: skip
        assert c.post("/v1/events", json={"events": events}, headers=headers).status_code == 200
        yield c, headers


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.url, r.text)
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {
            "code", "message", "details", "field"
        }, body  # fmt: skip


@FUZZ
@given(
    path=st.sampled_from(sorted(GETS)),
    data=st.data(),
)
def test_query_parameters(client: tuple[TestClient, dict[str, str]], path: str, data: Any) -> None:
    c, headers = client
    names = GETS[path] + ["unknown"]
    chosen = data.draw(st.lists(st.sampled_from(names), max_size=4, unique=True))
    params = [(n, data.draw(TEXT)) for n in chosen]
    check(c.get(path, params=params, headers=headers))


@FUZZ
@given(workflow_id=TEXT, suffix=st.sampled_from(["", "/performance"]))
def test_path_parameters(
    client: tuple[TestClient, dict[str, str]], workflow_id: str, suffix: str
) -> None:
    c, headers = client
    path = f"/v1/analytics/workflows/{quote(workflow_id, safe='')}{suffix}"
    check(c.get(path, headers=headers))
    check(
        c.put(f"/v1/workflows/{quote(workflow_id, safe='')}", json={"name": "n"}, headers=headers)
    )
    for kind in ("reports", "export"):
        check(c.get(f"/v1/analytics/{kind}/{quote(workflow_id, safe='')}", headers=headers))


def _mutate(base: dict[str, Any], data: Any) -> dict[str, Any]:
    body = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from([*base, "filters.*", "extra"]))
        if key == "filters.*":
            sub = data.draw(st.sampled_from([*base["filters"], "extra"]))
            if isinstance(body["filters"], dict):
                body["filters"][sub] = data.draw(JSON)
        else:
            body[key] = data.draw(JSON)
    return body


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["reports", "export"]))
def test_job_bodies(client: tuple[TestClient, dict[str, str]], data: Any, kind: str) -> None:
    c, headers = client
    body = _mutate(REPORT if kind == "reports" else EXPORT, data)
    check(c.post(f"/v1/analytics/{kind}", json=body, headers=headers))


@FUZZ
@given(body=JSON, name=JSON)
def test_other_bodies(client: tuple[TestClient, dict[str, str]], body: Any, name: Any) -> None:
    c, headers = client
    check(c.post("/v1/analytics/reports", json=body, headers=headers))
    check(c.post("/v1/analytics/export", json=body, headers=headers))
    check(c.put("/v1/workflows/wf", json={"name": name}, headers=headers))
    check(c.put("/v1/workflows/wf", json=body, headers=headers))
    check(c.post("/v1/events", json=body, headers=headers))
    check(c.post("/v1/events", json={"events": [body]}, headers=headers))


@FUZZ
@given(tenant=TEXT, expires=TEXT, signature=TEXT, kind=st.sampled_from(["reports", "export"]))
def test_signed_link_parameters(
    client: tuple[TestClient, dict[str, str]], tenant: str, expires: str, signature: str, kind: str
) -> None:
    c, _ = client
    params = {"tenant": tenant, "expires": expires, "signature": signature}
    check(c.get(f"/v1/analytics/{kind}/report-0/download", params=params))
