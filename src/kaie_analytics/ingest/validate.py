"""Validation of single events against the ingestion contract (spec/EVENTS.md).

Each event type is a msgspec ``Struct``: decoding a raw event validates types,
lengths, patterns, required and unknown fields in one pass in C. The few rules
a schema cannot say (timestamp bounds, feedback needing a score, object sizes)
are checked after. ``validate_event`` returns the event as a row of column
values, or raises :class:`EventError` naming the first offending field.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NamedTuple

import msgspec
import orjson
from msgspec import Meta, Struct

#: Fields stored as their own columns, taken from the raw JSON by the store.
FIELD_COLUMNS: tuple[str, ...] = (
    "workflow_id", "execution_id", "customer_id", "journey_id", "node_id", "channel",
    "workflow_name", "duration_ms", "error_type", "error_message", "node_type", "message_id",
    "csat", "nps", "comment", "segment", "traits", "journey_type", "step", "step_name",
    "reason", "properties",
)  # fmt: skip

MIN_TS = datetime(2000, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(minutes=10)
#: Free-form objects, kept as JSON text: at most this big, this deep, with 64-bit integers.
OBJECT_FIELDS = ("properties", "traits")
MAX_OBJECT_BYTES = 8 * 1024
#: Levels of nesting allowed inside ``properties`` and ``traits`` (the object itself is 1).
MAX_DEPTH = 32
#: orjson, DuckDB's JSON and most readers hold integers in 64 bits: larger ones are refused.
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
CHANNEL_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
CODE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"

Ident = Annotated[str, Meta(min_length=1, max_length=256, pattern=NO_CONTROL)]
Channel = Annotated[str, Meta(pattern=CHANNEL_PATTERN)]
Code = Annotated[str, Meta(pattern=CODE_PATTERN)]
RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
#: Kept as sent (so raw exports give it back as it was), parsed after decoding.
Timestamp = Annotated[str, Meta(pattern=RFC3339)]
Duration = Annotated[int, Meta(ge=0, le=2**53)]
Text64 = Annotated[str, Meta(min_length=1, max_length=64)]
Text128 = Annotated[str, Meta(min_length=1, max_length=128)]
Text200 = Annotated[str, Meta(min_length=1, max_length=200)]
Text1000 = Annotated[str, Meta(min_length=1, max_length=1000)]
Text2000 = Annotated[str, Meta(min_length=1, max_length=2000)]
Object = dict[str, Any]


class EventError(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class _Event(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    timestamp: Timestamp
    id: Text128 | None = None
    workflow_id: Ident | None = None
    execution_id: Ident | None = None
    customer_id: Ident | None = None
    journey_id: Ident | None = None
    node_id: Ident | None = None
    channel: Channel | None = None
    properties: Object | None = None


class ExecutionStarted(_Event, tag="execution.started"):
    workflow_id: Ident
    execution_id: Ident
    channel: Channel
    workflow_name: Text200 | None = None


class ExecutionCompleted(_Event, tag="execution.completed"):
    workflow_id: Ident
    execution_id: Ident
    duration_ms: Duration | None = None


class ExecutionFailed(_Event, tag="execution.failed"):
    workflow_id: Ident
    execution_id: Ident
    error_type: Code
    duration_ms: Duration | None = None
    error_message: Text1000 | None = None


class NodeCompleted(_Event, tag="node.completed"):
    workflow_id: Ident
    execution_id: Ident
    node_id: Ident
    node_type: Text64
    duration_ms: Duration | None = None


class NodeFailed(_Event, tag="node.failed"):
    workflow_id: Ident
    execution_id: Ident
    node_id: Ident
    node_type: Text64
    error_type: Code
    duration_ms: Duration | None = None
    error_message: Text1000 | None = None


class MessageSent(_Event, tag="message.sent"):
    customer_id: Ident
    channel: Channel
    message_id: Ident | None = None


class MessageReceived(_Event, tag="message.received"):
    customer_id: Ident
    channel: Channel
    message_id: Ident | None = None


class FeedbackSubmitted(_Event, tag="feedback.submitted"):
    customer_id: Ident
    csat: Annotated[int, Meta(ge=1, le=5)] | None = None
    nps: Annotated[int, Meta(ge=0, le=10)] | None = None
    comment: Text2000 | None = None


class CustomerUpdated(_Event, tag="customer.updated"):
    customer_id: Ident
    segment: Text64 | None = None
    traits: Object | None = None


class JourneyStep(_Event, tag="journey.step"):
    journey_type: Text64
    journey_id: Ident
    customer_id: Ident
    step: Annotated[int, Meta(ge=1, le=100)]
    step_name: Text200


class JourneyCompleted(_Event, tag="journey.completed"):
    journey_type: Text64
    journey_id: Ident
    customer_id: Ident


class JourneyDropped(_Event, tag="journey.dropped"):
    journey_type: Text64
    journey_id: Ident
    customer_id: Ident
    reason: Code
    step: Annotated[int, Meta(ge=1, le=100)] | None = None


EVENT_CLASSES = (
    ExecutionStarted, ExecutionCompleted, ExecutionFailed, NodeCompleted, NodeFailed,
    MessageSent, MessageReceived, FeedbackSubmitted, CustomerUpdated, JourneyStep,
    JourneyCompleted, JourneyDropped,
)  # fmt: skip
EVENT_TYPES: tuple[str, ...] = tuple(str(c.__struct_config__.tag) for c in EVENT_CLASSES)
_TYPE_OF: dict[type[_Event], str] = {c: str(c.__struct_config__.tag) for c in EVENT_CLASSES}

_decoder = msgspec.json.Decoder(
    ExecutionStarted | ExecutionCompleted | ExecutionFailed | NodeCompleted | NodeFailed
    | MessageSent | MessageReceived | FeedbackSubmitted | CustomerUpdated | JourneyStep
    | JourneyCompleted | JourneyDropped
)  # fmt: skip

_AT = re.compile(r" - at `\$\.([A-Za-z0-9_]+)[^`]*`")
_NAMED = re.compile(r"(?:unknown|required) field `([^`]+)`")
_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
          "null": "null", "array": "a list", "object": "an object"}  # fmt: skip
#: msgspec's wording of a failed constraint, and ours (after the field's name):
#: a pattern and a format of its groups, with the names of JSON kinds.
_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Expected `(\w+)`, got `(\w+)`"), "must be {0}, not {1}"),
    (re.compile(r"Expected `\w+` >= (\S+)"), "must be at least {0}"),
    (re.compile(r"Expected `\w+` <= (\S+)"), "must be at most {0}"),
    (re.compile(r"Expected `str` of length >= (\d+)"), "must be at least {0} characters long"),
    (re.compile(r"Expected `str` of length <= (\d+)"), "must be at most {0} characters long"),
    (re.compile(r"Expected `str` matching regex '(.+)'"), "must match {0}"),
    (re.compile(r"Expected `(?:array|object)` of length <= (\d+)"), "must hold at most {0} items"),
)


def _phrase(field: str, message: str) -> str:
    """A constraint message of msgspec, in words (the field named first)."""
    for pattern, words in _PHRASES:
        m = pattern.search(message)
        if m:
            return f"{field} " + words.format(*(_KINDS.get(g, g) for g in m.groups()))
    return f"{field}: {message}"


def _error_from(exc: msgspec.ValidationError | msgspec.DecodeError) -> EventError:
    text = str(exc)
    m = _AT.search(text) or _NAMED.search(text)
    field = m.group(1) if m else None
    message = _AT.sub("", text)
    if field == "type" and "Invalid value" in text:
        message = f"type must be one of: {', '.join(EVENT_TYPES)}"
    elif "missing required field `type`" in text:
        field, message = "type", "type is required"
    elif field and "Expected" in message:
        message = _phrase(field, message)
    return EventError(field, message)


class ValidEvent(NamedTuple):
    """A valid event: its id (given or derived), type, UTC time and decoded fields."""

    event_id: str
    id_given: bool
    type: str
    ts_us: int
    ts_text: str
    raw: bytes
    fields: _Event
    #: ``properties`` and ``traits`` as compact JSON text (None when absent).
    objects: tuple[str | None, ...]


#: JSON tokens that matter for finding where something is in raw JSON: strings
#: (keys among them), brackets, colons and commas; whatever lies between is skipped.
JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def _field_where(
    data: bytes, *, at: int | None = None, deeper_than: int | None = None
) -> tuple[bool, str | None]:
    """Whether byte ``at`` is reached (or nesting past ``deeper_than``), and in which
    top-level field of the event.

    Only run once an event is known or likely to be wrong, to name the field.
    """
    depth, key, last = 0, None, None
    for m in JSON_TOKEN.finditer(data):
        tok = m.group()
        if at is not None and m.start() >= at:
            return True, key
        if tok in (b"{", b"["):
            depth += 1
            if deeper_than is not None and depth > deeper_than:
                return True, key
        elif tok in (b"}", b"]"):
            depth -= 1
        elif tok == b":" and depth == 1 and last is not None:
            key = last.decode("utf-8", "replace")
        last = tok[1:-1] if tok[:1] == b'"' else None
        if at is not None and m.end() > at:
            return True, key
    return False, None


def _check_depth(data: bytes) -> None:
    if data.count(b"{") + data.count(b"[") <= MAX_DEPTH:
        return  # cannot be nested that deep: spare the scan
    # The event's own braces are level 0 of its fields, hence the + 1.
    too_deep, field = _field_where(data, deeper_than=MAX_DEPTH + 1)
    if too_deep:
        raise EventError(
            field, f"{field or 'the event'} is nested more than {MAX_DEPTH} levels deep"
        )


def _bad_int_path(value: Any, path: str) -> str | None:
    """The path of the first integer outside 64 bits in a decoded object."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if MIN_INT <= value <= MAX_INT else path
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for k, v in items:
        found = _bad_int_path(v, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]")
        if found:
            return found
    return None


def _object_json(name: str, value: Object | None) -> str | None:
    """A ``properties`` / ``traits`` object as compact JSON text, within the limits."""
    if value is None:
        return None
    try:
        text = orjson.dumps(value)
    except TypeError:  # orjson refuses integers outside 64 bits
        path = _bad_int_path(value, name) or name
        raise EventError(
            name,
            f"{path} is an integer outside -2^63 to 2^64-1; send such numbers as strings",
        ) from None
    if len(text) > MAX_OBJECT_BYTES:
        raise EventError(name, f"{name} must be at most {MAX_OBJECT_BYTES} bytes as JSON")
    return text.decode()


def _decode(data: bytes) -> _Event:
    _check_depth(data)
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        # Null means absent, also for a field this type of event does not take (a row
        # of the raw events export has every field): decoded again without them.
        if b"null" in data:
            try:
                fields = orjson.loads(data)
            except orjson.JSONDecodeError:  # what msgspec reads and orjson not: no nulls to drop
                fields = None
            if isinstance(fields, dict) and None in fields.values():
                present = {k: v for k, v in fields.items() if v is not None}
                return _decode(orjson.dumps(present))
        raise _error_from(exc) from None
    except msgspec.DecodeError as exc:
        raise _error_from(exc) from None
    except UnicodeDecodeError:
        try:
            data.decode()
            at = 0
        except UnicodeDecodeError as exc:
            at = exc.start
        _, field = _field_where(data, at=at)
        raise EventError(field, f"{field or 'the event'} holds bytes that are not UTF-8") from None
    except RecursionError:  # defensive: the depth check comes first
        raise EventError(None, f"the event is nested more than {MAX_DEPTH} levels deep") from None


def content_id(event: dict[str, Any]) -> str:
    """The id of an event sent without one: SHA-256 of its JSON with sorted keys, its
    null fields left out (null means absent), so that a row of the raw events export
    (every field, null where absent) sent back gets the id the event first got."""
    present = {k: v for k, v in event.items() if v is not None}
    return hashlib.sha256(orjson.dumps(present, option=orjson.OPT_SORT_KEYS)).hexdigest()


def validate_event(raw: bytes | msgspec.Raw, now: datetime) -> ValidEvent:
    """Validate one raw JSON event (spec/EVENTS.md)."""
    data = raw if type(raw) is bytes else bytes(raw)
    ev = _decode(data)
    try:
        ts = datetime.fromisoformat(ev.timestamp.upper())
    except ValueError:
        raise EventError("timestamp", "timestamp is not a valid date-time") from None
    if ts < MIN_TS:
        raise EventError("timestamp", "timestamp must not be before 2000-01-01")
    if ts > now + FUTURE_SLACK:
        raise EventError("timestamp", "timestamp must not be more than 10 minutes in the future")
    if type(ev) is FeedbackSubmitted and ev.csat is None and ev.nps is None:
        raise EventError("csat", "feedback.submitted needs csat, nps or both")
    objects = tuple(_object_json(name, getattr(ev, name, None)) for name in OBJECT_FIELDS)
    event_id = ev.id
    if event_id is None:
        event_id = content_id(orjson.loads(data))
    return ValidEvent(
        event_id, ev.id is not None, _TYPE_OF[type(ev)], (ts - _EPOCH) // _US, ev.timestamp,
        data, ev, objects,
    )  # fmt: skip


def timestamp_us(text: str) -> int:
    """Microseconds since the epoch of a timestamp text that passed validation."""
    return (datetime.fromisoformat(text.upper()) - _EPOCH) // _US


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_identifier(name: str, value: str) -> None:
    """The identifier rule of the envelope: 1 to 256 characters, no control characters."""
    if not 1 <= len(value) <= 256 or _CONTROL.search(value):
        raise EventError(name, f"{name} must be 1 to 256 characters without control characters")
