"""Splitting ``POST /v1/events`` bodies (JSON or NDJSON) into raw events."""

from __future__ import annotations

from typing import Any

import msgspec

from kaie_analytics.errors import InvalidRequest
from kaie_analytics.ingest.validate import JSON_TOKEN

MAX_JSON_EVENTS = 1_000
MAX_NDJSON_LINES = 10_000
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


_body_decoder = msgspec.json.Decoder(_Body)


def decode_events(body: bytes, content_type: str | None) -> list[Any]:
    """Split a body into raw events (each validated later, on its own)."""
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    if ctype in NDJSON_TYPES:
        return _decode_ndjson(body)
    if ctype not in ("application/json", "text/json"):
        raise InvalidRequest(
            f"unsupported Content-Type {ctype!r}; use application/json or application/x-ndjson",
            field="Content-Type",
        )
    try:
        events: list[Any] = _body_decoder.decode(body).events
    except (RecursionError, msgspec.DecodeError) as exc:
        # One event the decoder cannot read (nested very deep, a lone surrogate)
        # must not sink the others: split the array without decoding it.
        events = _split_events(body, str(exc))
    except msgspec.ValidationError as exc:
        raise InvalidRequest(
            f'the body must be an object {{"events": [...]}}: {exc}', field="events"
        ) from None
    if not 1 <= len(events) <= MAX_JSON_EVENTS:
        raise InvalidRequest(
            f"events must hold 1 to {MAX_JSON_EVENTS} events (got {len(events)});"
            " use NDJSON for up to 10,000",
            field="events",
        )
    return events


def _split_events(body: bytes, problem: str) -> list[bytes]:
    """The events of ``{"events": [...]}`` as raw bytes, each validated later on its own.

    Only for bodies the decoder refused: it checks the framing, not the events,
    so an unreadable event gets its own error and the rest are kept.
    """
    events: list[bytes] = []
    depth, start, last, in_events = 0, -1, b"", False
    for m in JSON_TOKEN.finditer(body):
        tok = m.group()
        if tok in (b"{", b"["):
            depth += 1
            if depth == 2 and in_events and tok == b"[":
                start = m.end()
        elif tok in (b"}", b"]"):
            if depth == 2 and in_events and tok == b"]":
                if body[start : m.start()].strip():
                    events.append(body[start : m.start()].strip())
                in_events, start = False, -1
            depth -= 1
        elif tok == b"," and depth == 2 and start >= 0:
            events.append(body[start : m.start()].strip())
            start = m.end()
        elif tok == b":" and depth == 1:
            in_events = last == b'"events"'
            if not in_events:
                raise InvalidRequest('the body must be an object {"events": [...]}', field="events")
        last = tok
    if depth != 0 or not events:
        raise InvalidRequest(f"the body is not valid JSON: {problem}", field="body")
    return events


def _decode_ndjson(body: bytes) -> list[Any]:
    lines = body.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InvalidRequest("the body holds no events", field="body")
    if len(lines) > MAX_NDJSON_LINES:
        raise InvalidRequest(
            f"an NDJSON body holds 1 to {MAX_NDJSON_LINES} lines (got {len(lines)})", field="body"
        )
    return lines
