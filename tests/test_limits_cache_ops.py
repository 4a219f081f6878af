"""Rate limits, the response cache, and the operational endpoints."""

from __future__ import annotations

import json
import logging
import time

import pytest
from fastapi.testclient import TestClient

from conftest import Api, make_key
from kaie_analytics.app import create_app
from kaie_analytics.config import Settings

EXEC = {"type": "execution.started", "timestamp": "2024-01-10T10:00:00Z", "workflow_id": "wf",
        "execution_id": "x1", "channel": "sms"}  # fmt: skip
Q = {"start_date": "2024-01-01", "end_date": "2024-01-31"}


#: Every test of ``settings`` here runs with Redis and PostgreSQL too (conftest).
SHARED_SERVICES = True


@pytest.fixture
def tight(settings: Settings) -> TestClient:
    settings = settings.model_copy(
        update={"rate_limits": "realtime=5/hour,historical=3/hour,events=4/minute,default=2/hour"}
    )
    with TestClient(create_app(settings)) as c:
        c.settings = settings  # type: ignore[attr-defined]
        yield c


def test_limit_is_exact_at_the_boundary(tight: TestClient) -> None:
    key = make_key(tight.settings, "acme")  # type: ignore[attr-defined]
    h = {"Authorization": f"Bearer {key}"}
    for i in range(5):
        r = tight.get("/v1/analytics/realtime", headers=h)
        assert r.status_code == 200, (i, r.text)
        assert r.headers["X-RateLimit-Limit"] == "5"
        assert r.headers["X-RateLimit-Remaining"] == str(4 - i)
        assert int(r.headers["X-RateLimit-Reset"]) > time.time()
    r = tight.get("/v1/analytics/realtime", headers=h)
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert 0 < int(r.headers["Retry-After"]) <= 3600
    assert r.headers["X-RateLimit-Remaining"] == "0"


def test_limits_are_per_key_and_per_class(tight: TestClient) -> None:
    settings = tight.settings  # type: ignore[attr-defined]
    a = {"Authorization": f"Bearer {make_key(settings, 'acme')}"}
    b = {"Authorization": f"Bearer {make_key(settings, 'acme')}"}
    for _ in range(2):
        assert tight.get("/v1/workflows", headers=a).status_code == 200
    assert tight.get("/v1/workflows", headers=a).status_code == 429
    assert tight.get("/v1/workflows", headers=b).status_code == 200  # another key
    assert tight.get("/v1/analytics/realtime", headers=a).status_code == 200  # another class
    for _ in range(4):
        r = tight.post("/v1/events", json={"events": [EXEC]}, headers=a)
        assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "4"
    assert tight.post("/v1/events", json={"events": [EXEC]}, headers=a).status_code == 429
    r = tight.get("/v1/analytics/workflows/wf", params=Q, headers=a)
    assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "3"


def test_cache_etag_and_invalidation(api: Api, other_api: Api) -> None:
    api.send([EXEC])
    other_api.send([EXEC])
    r1 = api.get("/v1/analytics/workflows/wf", params=Q)
    assert r1.headers["X-Cache"] == "miss"
    assert r1.headers["Cache-Control"] == "private, no-cache"
    r2 = api.get("/v1/analytics/workflows/wf", params=Q)
    assert r2.headers["X-Cache"] == "hit" and r2.content == r1.content
    etag = r1.headers["ETag"]
    r3 = api.get("/v1/analytics/workflows/wf", params=Q, headers={"If-None-Match": etag})
    assert r3.status_code == 304 and r3.content == b"" and r3.headers["ETag"] == etag
    # the same query by another tenant is computed for that tenant, not served from ours
    o = other_api.get("/v1/analytics/workflows/wf", params=Q)
    assert o.headers["X-Cache"] == "miss"
    # an ingest into the period makes the next answer fresh
    api.send([{**EXEC, "execution_id": "x2"}])
    r4 = api.get("/v1/analytics/workflows/wf", params=Q, headers={"If-None-Match": etag})
    assert r4.status_code == 200 and r4.headers["X-Cache"] == "miss"
    assert r4.json()["data"]["metrics"]["total_executions"] == 2
    assert r4.headers["ETag"] != etag
    # equivalent spellings of a query share one entry
    same = {**Q, "granularity": "day", "timezone": "UTC"}
    assert api.get("/v1/analytics/workflows/wf", params=same).headers["X-Cache"] == "hit"


def test_request_id_metrics_and_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kaie_analytics.access"):
        r = api.get("/v1/workflows", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    assert len(api.get("/v1/workflows").headers["X-Request-ID"]) == 32
    rec = next(r for r in caplog.records if getattr(r, "request_id", None) == "abc-123")
    assert rec.status == 200 and rec.route == "/v1/workflows" and rec.tenant == "acme"  # type: ignore[attr-defined]
    from kaie_analytics.logs import JsonFormatter

    line = json.loads(JsonFormatter().format(rec))
    assert line["request_id"] == "abc-123" and line["status"] == 200
    api.send([EXEC])
    text = api.client.get("/metrics").text
    assert 'kaie_http_requests_total{method="GET",route="/v1/workflows",status="200"} 2.0' in text
    assert 'kaie_events_total{outcome="accepted"} 1.0' in text
    assert "kaie_http_request_duration_seconds_bucket" in text


def test_a_partial_rate_limit_setting_changes_only_its_classes(settings: Settings) -> None:
    settings = settings.model_copy(update={"rate_limits": "historical=5/hour"})
    with TestClient(create_app(settings)) as c:
        h = {"Authorization": f"Bearer {make_key(settings, 'acme')}"}
        r = c.get("/v1/analytics/realtime", headers=h)
        assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "1000"
        r = c.get("/v1/workflows", headers=h)
        assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "1000"
        r = c.get("/v1/analytics/customers/engagement", headers=h)
        assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "5"


def test_failed_authentications_are_throttled_per_address(settings: Settings) -> None:
    settings = settings.model_copy(update={"auth_failure_limit": "3/minute"})
    with TestClient(create_app(settings)) as c:
        good = {"Authorization": f"Bearer {make_key(settings, 'acme')}"}
        for _ in range(5):  # no key at all is no guess: not counted
            assert c.get("/v1/workflows").status_code == 401
        assert c.get("/v1/workflows", headers=good).status_code == 200
        bad = [{"Authorization": "Bearer kaie_x_y"}, {"Authorization": "Basic eDp5"},
               {"Authorization": f"{good['Authorization']}x"}]  # fmt: skip
        for i, headers in enumerate(bad):
            assert c.get("/v1/workflows", headers=headers).status_code == 401, i
        # Past the limit even a good key from this address waits: guessing gains nothing.
        r = c.get("/v1/workflows", headers=good)
        assert r.status_code == 429 and r.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
        assert 0 < int(r.headers["Retry-After"]) <= 60
        # Another address is not affected.
        other = TestClient(c.app, client=("203.0.113.9", 50000))
        other.portal = c.portal  # the app's own event loop (Redis connections belong to one)
        assert other.get("/v1/workflows", headers=good).status_code == 200
