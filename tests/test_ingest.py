"""POST /v1/events, rule by rule (spec/EVENTS.md)."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from conftest import Api, stored_events

T = "2024-01-25T14:30:00Z"

VALID: list[dict[str, Any]] = [
    {"type": "execution.started", "timestamp": T, "workflow_id": "w", "execution_id": "x",
     "channel": "whatsapp", "customer_id": "c", "workflow_name": "Bot"},
    {"type": "execution.completed", "timestamp": T, "workflow_id": "w", "execution_id": "x",
     "duration_ms": 0, "channel": "sms", "customer_id": "c"},
    {"type": "execution.failed", "timestamp": T, "workflow_id": "w", "execution_id": "y",
     "error_type": "timeout", "error_message": "slow", "duration_ms": 5},
    {"type": "node.completed", "timestamp": T, "workflow_id": "w", "execution_id": "x",
     "node_id": "n", "node_type": "message", "duration_ms": 3},
    {"type": "node.failed", "timestamp": T, "workflow_id": "w", "execution_id": "x",
     "node_id": "n", "node_type": "message", "error_type": "api_error"},
    {"type": "message.sent", "timestamp": T, "customer_id": "c", "channel": "voice",
     "message_id": "m1", "workflow_id": "w", "execution_id": "x"},
    {"type": "message.received", "timestamp": "2024-01-25T16:30:00.123456+02:00",
     "customer_id": "c", "channel": "voice"},
    {"type": "feedback.submitted", "timestamp": T, "customer_id": "c", "csat": 5},
    {"type": "feedback.submitted", "timestamp": T, "customer_id": "c", "nps": 0,
     "comment": "meh", "channel": "sms"},
    {"type": "customer.updated", "timestamp": T, "customer_id": "c", "segment": "vip",
     "traits": {"plan": "pro"}, "properties": {"a": [1, 2]}},
    {"type": "journey.step", "timestamp": T, "journey_type": "support", "journey_id": "j",
     "customer_id": "c", "step": 1, "step_name": "Welcome", "channel": "webchat"},
    {"type": "journey.completed", "timestamp": T, "journey_type": "support", "journey_id": "j",
     "customer_id": "c"},
    {"type": "journey.dropped", "timestamp": T, "journey_type": "support", "journey_id": "j2",
     "customer_id": "c", "reason": "user_abandoned", "step": 2},
]  # fmt: skip


def test_every_type_is_accepted_and_stored(api: Api) -> None:
    r = api.post("/v1/events", json={"events": VALID})
    assert r.status_code == 200
    assert r.json() == {
        "data": {"accepted": len(VALID), "duplicates": 0, "rejected": 0, "errors": []}
    }
    store = api.client.app.state.engine  # type: ignore[attr-defined]
    assert store.count_events("acme") == len(VALID)
    [received] = [
        m for m in stored_events(store, "acme", "messages") if m["direction"] == "received"
    ]
    # Stored as UTC, to the microsecond.
    assert received["timestamp"] == datetime(2024, 1, 25, 14, 30, 0, 123456)


def _bad(base: int, **change: Any) -> dict[str, Any]:
    ev = dict(VALID[base])
    for k, v in change.items():
        if v is ...:
            ev.pop(k, None)
        else:
            ev[k] = v
    return ev


FUTURE = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
INVALID = [
    (_bad(0, type="execution.begun"), "type"),
    (_bad(0, type=...), "type"),
    (_bad(0, timestamp=...), "timestamp"),
    (_bad(0, timestamp="2024-01-25T14:30:00"), "timestamp"),  # no offset
    (_bad(0, timestamp="2024-01-25"), "timestamp"),
    (_bad(0, timestamp="1999-12-31T23:59:59Z"), "timestamp"),
    (_bad(0, timestamp=FUTURE), "timestamp"),
    (_bad(0, timestamp="2024-02-30T00:00:00Z"), "timestamp"),
    (_bad(0, workflow_id=...), "workflow_id"),
    (_bad(0, channel=...), "channel"),
    (_bad(0, channel="WhatsApp"), "channel"),
    (_bad(0, channel="a" * 33), "channel"),
    (_bad(0, workflow_id=""), "workflow_id"),
    (_bad(0, workflow_id="x" * 257), "workflow_id"),
    (_bad(0, customer_id="a\nb"), "customer_id"),
    (_bad(0, execution_id=7), "execution_id"),
    (_bad(0, id=""), "id"),
    (_bad(0, id="i" * 129), "id"),
    (_bad(0, workflow_name="n" * 201), "workflow_name"),
    (_bad(0, duration_ms=5), "duration_ms"),  # not a field of execution.started
    (_bad(0, colour="red"), "colour"),
    (_bad(1, duration_ms=-1), "duration_ms"),
    (_bad(1, duration_ms=1.5), "duration_ms"),
    (_bad(1, duration_ms=True), "duration_ms"),
    (_bad(2, error_type="Timeout"), "error_type"),
    (_bad(2, error_message="e" * 1001), "error_message"),
    (_bad(3, node_type=...), "node_type"),
    (_bad(3, node_type="t" * 65), "node_type"),
    (_bad(5, customer_id=...), "customer_id"),
    (_bad(7, csat=...), "csat"),
    (_bad(7, csat=6), "csat"),
    (_bad(7, csat=0), "csat"),
    (_bad(8, nps=11), "nps"),
    (_bad(8, comment="c" * 2001), "comment"),
    (_bad(9, segment="s" * 65), "segment"),
    (_bad(9, traits=[1]), "traits"),
    (_bad(9, properties={"big": "x" * 9000}), "properties"),
    (_bad(9, properties="nope"), "properties"),
    (_bad(10, step=0), "step"),
    (_bad(10, step=101), "step"),
    (_bad(10, step_name=...), "step_name"),
    (_bad(10, journey_type="j" * 65), "journey_type"),
    (_bad(12, reason=...), "reason"),
    (_bad(12, reason="User abandoned"), "reason"),
    ("not an object", None),
]


@pytest.mark.parametrize(("event", "field"), INVALID)
def test_invalid_event_is_rejected_with_field(api: Api, event: Any, field: str | None) -> None:
    r = api.post("/v1/events", json={"events": [VALID[0], event]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["accepted"] == 1 and data["rejected"] == 1
    (error,) = data["errors"]
    assert error["index"] == 1
    assert error["code"] == "INVALID_EVENT"
    assert error["field"] == field
    assert error["message"]
    assert api.client.app.state.engine.count_events("acme") == 1  # type: ignore[attr-defined]


def test_duplicates_within_and_across_requests(api: Api) -> None:
    ev = {**VALID[5], "id": "m-1"}
    r = api.post("/v1/events", json={"events": [ev, ev, {**ev, "id": "m-2"}]}).json()["data"]
    assert (r["accepted"], r["duplicates"]) == (2, 1)
    r = api.post("/v1/events", json={"events": [ev, {**ev, "id": "m-3"}]}).json()["data"]
    assert (r["accepted"], r["duplicates"]) == (1, 1)
    # Without id: the canonical content hash is the id, whatever the key order.
    anon = dict(VALID[6])
    reordered = dict(reversed(list(anon.items())))
    r = api.post("/v1/events", json={"events": [anon]}).json()["data"]
    assert r["accepted"] == 1
    r = api.post("/v1/events", json={"events": [reordered]}).json()["data"]
    assert (r["accepted"], r["duplicates"]) == (0, 1)
    assert api.client.app.state.engine.count_events("acme") == 4  # type: ignore[attr-defined]


def test_same_id_in_two_tenants_is_not_a_duplicate(api: Api, other_api: Api) -> None:
    ev = {**VALID[5], "id": "shared"}
    assert api.post("/v1/events", json={"events": [ev]}).json()["data"]["accepted"] == 1
    assert other_api.post("/v1/events", json={"events": [ev]}).json()["data"]["accepted"] == 1


def test_dedupe_survives_restart(settings: Any) -> None:
    from fastapi.testclient import TestClient

    from conftest import make_key
    from kaie_analytics.app import create_app

    key = make_key(settings, "acme")
    ev = {**VALID[5], "id": "persist"}
    for expected in ((1, 0), (0, 1)):
        with TestClient(create_app(settings)) as c:
            r = c.post("/v1/events", json={"events": [ev]},
                       headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            d = r.json()["data"]
            assert (d["accepted"], d["duplicates"]) == expected


def test_ndjson_and_gzip(api: Api) -> None:
    lines = [orjson.dumps({**e, "id": f"n{i}"}) for i, e in enumerate(VALID)]
    body = b"\n".join([*lines[:3], b"{not json", *lines[3:]]) + b"\n"
    r = api.post("/v1/events", content=gzip.compress(body),
                 headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"})  # fmt: skip
    data = r.json()["data"]
    assert data["accepted"] == len(VALID)
    assert data["errors"][0]["index"] == 3  # line number - 1
    # the same events again as gzipped JSON: all duplicates
    payload = orjson.dumps({"events": [orjson.loads(x) for x in lines]})
    r = api.post("/v1/events", content=gzip.compress(payload),
                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})  # fmt: skip
    assert r.json()["data"]["duplicates"] == len(VALID)


@pytest.mark.parametrize(
    ("content", "ctype", "status", "code"),
    [
        (b"{", "application/json", 400, "INVALID_REQUEST"),
        (b'{"events": []}', "application/json", 400, "INVALID_REQUEST"),
        (b'{"events": {}}', "application/json", 400, "INVALID_REQUEST"),
        (b"[]", "application/json", 400, "INVALID_REQUEST"),
        (b"", "application/x-ndjson", 400, "INVALID_REQUEST"),
        (b"a=1", "application/x-www-form-urlencoded", 400, "INVALID_REQUEST"),
        (orjson.dumps({"events": [VALID[5]] * 1001}), "application/json", 400, "INVALID_REQUEST"),
        (b"\n".join([orjson.dumps(VALID[5])] * 10001), "application/x-ndjson", 400,
         "INVALID_REQUEST"),
        (b" " * (5 * 1024 * 1024 + 1), "application/json", 413, "PAYLOAD_TOO_LARGE"),
    ],
)  # fmt: skip
def test_bad_bodies(api: Api, content: bytes, ctype: str, status: int, code: str) -> None:
    r = api.post("/v1/events", content=content, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert api.client.app.state.engine.count_events() == 0  # type: ignore[attr-defined]


def test_gzip_bomb_is_refused(api: Api) -> None:
    bomb = gzip.compress(b"x" * (6 * 1024 * 1024))
    r = api.post("/v1/events", content=bomb,
                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})  # fmt: skip
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_workflows_registry(api: Api, other_api: Api) -> None:
    api.send([VALID[0], {**VALID[3], "workflow_id": "w2"}])
    names = {w["workflow_id"]: w["name"] for w in api.get("/v1/workflows").json()["data"]}
    assert names == {"w": "Bot", "w2": None}
    r = api.put("/v1/workflows/w2", json={"name": "Second"})
    assert r.status_code == 200 and r.json()["data"]["name"] == "Second"
    r = api.put("/v1/workflows/new", json={"name": "Fresh"})
    assert r.json()["data"]["workflow_id"] == "new"
    assert len(api.get("/v1/workflows").json()["data"]) == 3
    assert other_api.get("/v1/workflows").json()["data"] == []
    assert api.put("/v1/workflows/x", json={"name": ""}).status_code == 400
    # a later-timestamped event renames it; the latest name wins
    api.send([{**VALID[0], "workflow_name": "Bot v2", "timestamp": "2024-02-01T00:00:00Z"},
              {**VALID[0], "workflow_name": "Old", "timestamp": "2023-02-01T00:00:00Z"}])  # fmt: skip
    names = {w["workflow_id"]: w["name"] for w in api.get("/v1/workflows").json()["data"]}
    assert names["w"] == "Bot v2"


def test_ingest_through_worker_processes(tmp_path: Any) -> None:
    """The same answers when batches are validated in ingest processes."""
    from fastapi.testclient import TestClient

    from conftest import GENEROUS_LIMITS, make_key
    from kaie_analytics.app import create_app
    from kaie_analytics.config import Settings

    settings = Settings(data_dir=tmp_path / "d", ingest_workers=1, rate_limits=GENEROUS_LIMITS)
    key = make_key(settings, "acme")
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as c:
        assert c.app.state.ingest_pool is not None  # type: ignore[attr-defined]
        events = [*VALID, {"type": "bogus", "timestamp": T}, {**VALID[5], "id": "dup"},
                  {**VALID[5], "id": "dup"}]  # fmt: skip
        d = c.post("/v1/events", json={"events": events}, headers=headers).json()["data"]
        assert (d["accepted"], d["duplicates"], d["rejected"]) == (len(VALID) + 1, 1, 1)
        assert d["errors"][0]["index"] == len(VALID) and d["errors"][0]["field"] == "type"
        r = c.post(
            "/v1/events", content=b"{", headers={**headers, "Content-Type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST"
        assert c.app.state.engine.count_events("acme") == len(VALID) + 1  # type: ignore[attr-defined]
