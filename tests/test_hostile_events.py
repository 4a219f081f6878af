"""One bad event never sinks its batch: each gets its own INVALID_EVENT, the rest is stored."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import Api, stored_events

GOOD = (
    b'{"type":"message.sent","timestamp":"2024-01-01T00:00:00Z","customer_id":"c",'
    b'"channel":"sms","id":"ID"}'
)
BASE = (
    b'{"type":"message.sent","timestamp":"2024-01-01T00:00:00Z","customer_id":"c","channel":"sms"'
)


def _deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


BAD: list[tuple[str, bytes, str | None, str]] = [
    ("utf8-id", BASE.replace(b'"c"', b'"c\xff"') + b"}", "customer_id", "UTF-8"),
    ("utf8-props", BASE + b',"properties":{"k":"\xfe\xff"}}', "properties", "UTF-8"),
    ("utf8-key", BASE + b',"properties":{"\xc3":1}}', "properties", "UTF-8"),
    ("big-int", BASE + b',"properties":{"n":123456789012345678901234567890}}', "properties",
     "properties.n"),
    ("big-negative", BASE + b',"properties":{"l":[1,-9223372036854775809]}}', "properties",
     "properties.l[1]"),
    ("big-trait", b'{"type":"customer.updated","timestamp":"2024-01-01T00:00:00Z",'
     b'"customer_id":"c","traits":{"n":18446744073709551616}}', "traits", "traits.n"),
    ("huge-float", BASE + b',"properties":{"f":1e400}}', "properties", "range"),
    ("deep-5000", BASE + b',"properties":' + _deep(5000) + b"}", "properties", "32 levels"),
    ("deep-33", BASE + b',"properties":' + _deep(33) + b"}", "properties", "32 levels"),
    ("surrogate", BASE.replace(b'"c"', b'"\\ud800"') + b"}", None, ""),
]  # fmt: skip


def _post(api: Api, body: bytes, ctype: str) -> dict[str, Any]:
    r = api.post("/v1/events", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    return r.json()["data"]


@pytest.mark.parametrize(("name", "bad", "field", "text"), BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("framing", ["ndjson", "json"])
def test_bad_event_is_rejected_alone(
    api: Api, framing: str, name: str, bad: bytes, field: str | None, text: str
) -> None:
    goods = [GOOD.replace(b"ID", f"{framing}-{name}-{i}".encode()) for i in range(2)]
    events = [goods[0], bad, goods[1]]
    if framing == "ndjson":
        data = _post(api, b"\n".join(events) + b"\n", "application/x-ndjson")
    else:
        data = _post(api, b'{"events": [' + b",".join(events) + b"]}", "application/json")
    assert (data["accepted"], data["rejected"]) == (2, 1)
    [err] = data["errors"]
    assert err["index"] == 1 and err["code"] == "INVALID_EVENT"
    if field is not None:
        assert err["field"] == field
    assert text in err["message"]
    assert api.client.app.state.engine.count_events("acme") == 2  # type: ignore[attr-defined]


def test_limits_are_inclusive(api: Api) -> None:
    """The largest 64-bit integers and 32 levels of nesting are stored as sent."""
    props = b'{"max":18446744073709551615,"min":-9223372036854775808,"deep":' + _deep(31) + b"}"
    data = _post(api, BASE + b',"properties":' + props + b"}", "application/x-ndjson")
    assert data["accepted"] == 1, data
    [stored] = stored_events(api.client.app.state.engine, "acme")  # type: ignore[attr-defined]
    assert orjson.loads(stored["properties"]) == orjson.loads(props)


def test_repeated_key_keeps_the_last_value(api: Api) -> None:
    """As most JSON parsers do (README, "Events"): the last of a repeated key is stored."""
    ev = BASE.replace(b'"customer_id":"c"', b'"customer_id":"first","customer_id":"last"') + b"}"
    assert _post(api, ev, "application/x-ndjson")["accepted"] == 1
    [stored] = stored_events(api.client.app.state.engine, "acme")  # type: ignore[attr-defined]
    assert stored["customer_id"] == "last"
