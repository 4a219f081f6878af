"""Validation of single events against the ingestion contract (spec/EVENTS.md).

``validate_event`` turns one decoded JSON object into a row of typed column
values, or raises :class:`EventError` naming the first offending field. It is
written as plain table-driven Python because it runs once per event on the hot
path of ingestion.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

#: Columns of a validated event, in the order of the events table.
COLUMNS: tuple[str, ...] = (
    "event_id",
    "type",
    "ts",
    "workflow_id",
    "execution_id",
    "customer_id",
    "journey_id",
    "node_id",
    "channel",
    "workflow_name",
    "duration_ms",
    "error_type",
    "error_message",
    "node_type",
    "message_id",
    "csat",
    "nps",
    "comment",
    "segment",
    "traits",
    "journey_type",
    "step",
    "step_name",
    "reason",
    "properties",
    "raw",
)
COLUMN_INDEX = {name: i for i, name in enumerate(COLUMNS)}

MIN_TS_US = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
FUTURE_SLACK_US = 10 * 60 * 1_000_000
MAX_OBJECT_BYTES = 8 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CHANNEL = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


class EventError(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


Checker = Callable[[str, Any], Any]


def _text(max_len: int, *, min_len: int = 1, no_control: bool = False) -> Checker:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise EventError(name, f"{name} must be a string")
        if not min_len <= len(value) <= max_len:
            raise EventError(name, f"{name} must be {min_len} to {max_len} characters")
        if no_control and _CONTROL.search(value):
            raise EventError(name, f"{name} must not contain control characters")
        return value

    return check


def _pattern(regex: re.Pattern[str]) -> Checker:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or not regex.match(value):
            raise EventError(name, f"{name} must match {regex.pattern}")
        return value

    return check


def _integer(lo: int, hi: int) -> Checker:
    def check(name: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise EventError(name, f"{name} must be an integer")
        if not lo <= value <= hi:
            raise EventError(name, f"{name} must be between {lo} and {hi}")
        return value

    return check


def _object(name: str, value: Any) -> str:
    if not isinstance(value, dict):
        raise EventError(name, f"{name} must be an object")
    encoded = orjson.dumps(value)
    if len(encoded) > MAX_OBJECT_BYTES:
        raise EventError(name, f"{name} must be at most {MAX_OBJECT_BYTES} bytes as JSON")
    return encoded.decode()


def parse_timestamp(value: Any, name: str = "timestamp") -> int:
    """RFC 3339 with an offset -> microseconds since the epoch, UTC."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise EventError(
            name, f"{name} must be an RFC 3339 date-time with an offset, e.g. 2024-01-25T14:30:00Z"
        )
    try:
        dt = datetime.fromisoformat(value.upper())
    except ValueError:
        raise EventError(name, f"{name} is not a valid date-time") from None
    return (dt - _EPOCH) // _MICROSECOND


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - _EPOCH

_IDENT = _text(256, no_control=True)
CHECKS: dict[str, Checker] = {
    "id": _text(128),
    "workflow_id": _IDENT,
    "execution_id": _IDENT,
    "customer_id": _IDENT,
    "journey_id": _IDENT,
    "node_id": _IDENT,
    "channel": _pattern(_CHANNEL),
    "properties": _object,
    "workflow_name": _text(200),
    "duration_ms": _integer(0, 2**53),
    "error_type": _pattern(_CODE),
    "error_message": _text(1000),
    "node_type": _text(64),
    "message_id": _text(256, no_control=True),
    "csat": _integer(1, 5),
    "nps": _integer(0, 10),
    "comment": _text(2000),
    "segment": _text(64),
    "traits": _object,
    "journey_type": _text(64),
    "step": _integer(1, 100),
    "step_name": _text(200),
    "reason": _pattern(_CODE),
}

ENVELOPE = frozenset(
    {
        "id",
        "type",
        "timestamp",
        "workflow_id",
        "execution_id",
        "customer_id",
        "journey_id",
        "node_id",
        "channel",
        "properties",
    }
)

# type -> (required fields besides type/timestamp, optional type-specific fields)
TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "execution.started": (("workflow_id", "execution_id", "channel"), ("workflow_name",)),
    "execution.completed": (("workflow_id", "execution_id"), ("duration_ms",)),
    "execution.failed": (
        ("workflow_id", "execution_id", "error_type"),
        ("duration_ms", "error_message"),
    ),
    "node.completed": (("workflow_id", "execution_id", "node_id", "node_type"), ("duration_ms",)),
    "node.failed": (
        ("workflow_id", "execution_id", "node_id", "node_type", "error_type"),
        ("duration_ms", "error_message"),
    ),
    "message.sent": (("customer_id", "channel"), ("message_id",)),
    "message.received": (("customer_id", "channel"), ("message_id",)),
    "feedback.submitted": (("customer_id",), ("csat", "nps", "comment")),
    "customer.updated": (("customer_id",), ("segment", "traits")),
    "journey.step": (
        ("journey_type", "journey_id", "customer_id", "step", "step_name"),
        (),
    ),
    "journey.completed": (("journey_type", "journey_id", "customer_id"), ()),
    "journey.dropped": (("journey_type", "journey_id", "customer_id", "reason"), ("step",)),
}
EVENT_TYPES = tuple(TYPES)
_ALLOWED = {t: ENVELOPE | set(req) | set(opt) for t, (req, opt) in TYPES.items()}


def validate_event(event: Any, now_us: int) -> list[Any]:
    """Validate one event; return its column values in ``COLUMNS`` order."""
    if not isinstance(event, dict):
        raise EventError(None, "event must be a JSON object")
    etype = event.get("type")
    if etype is None:
        raise EventError("type", "type is required")
    if not isinstance(etype, str) or etype not in TYPES:
        raise EventError("type", f"type must be one of: {', '.join(EVENT_TYPES)}")
    allowed = _ALLOWED[etype]
    for key in event:
        if key not in allowed:
            raise EventError(key, f"unknown field {key!r} for type {etype}")
    required, _ = TYPES[etype]
    if "timestamp" not in event:
        raise EventError("timestamp", "timestamp is required")
    for key in required:
        if event.get(key) is None:
            raise EventError(key, f"{key} is required for type {etype}")
    if etype == "feedback.submitted" and event.get("csat") is None and event.get("nps") is None:
        raise EventError("csat", "feedback.submitted needs csat, nps or both")

    ts = parse_timestamp(event["timestamp"])
    if ts < MIN_TS_US:
        raise EventError("timestamp", "timestamp must not be before 2000-01-01")
    if ts > now_us + FUTURE_SLACK_US:
        raise EventError("timestamp", "timestamp must not be more than 10 minutes in the future")

    row: list[Any] = [None] * len(COLUMNS)
    for key, value in event.items():
        if key in ("type", "timestamp") or value is None:
            continue
        checked = CHECKS[key](key, value)
        if key == "id":
            row[0] = checked
        else:
            row[COLUMN_INDEX[key]] = checked
    raw = orjson.dumps(event)
    if row[0] is None:
        row[0] = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()
    row[1] = etype
    row[2] = ts
    row[-1] = raw.decode()
    return row
