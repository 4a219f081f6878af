"""Reading and decoding ``POST /v1/events`` bodies (JSON or NDJSON, maybe gzipped)."""

from __future__ import annotations

import zlib
from typing import Any

import msgspec
from starlette.requests import Request

from kaie_analytics.errors import InvalidRequest, PayloadTooLarge

MAX_JSON_EVENTS = 1_000
MAX_NDJSON_LINES = 10_000
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


_body_decoder = msgspec.json.Decoder(_Body)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body with any gzip undone, refusing more than ``max_bytes``."""
    too_large = PayloadTooLarge(f"the body must be at most {max_bytes} bytes (after gzip)")
    declared = request.headers.get("content-length")
    encoding = request.headers.get("content-encoding", "identity").lower().strip()
    if encoding not in ("identity", "gzip"):
        raise InvalidRequest(
            f"unsupported Content-Encoding {encoding!r}; use gzip or none",
            field="Content-Encoding",
        )
    if declared and declared.isdigit() and encoding == "identity" and int(declared) > max_bytes:
        raise too_large
    raw = bytearray()
    inflater = zlib.decompressobj(wbits=31) if encoding == "gzip" else None
    out = bytearray()
    async for chunk in request.stream():
        if inflater is None:
            out += chunk
        else:
            raw += chunk
            try:
                out += inflater.decompress(bytes(raw), max_bytes + 1 - len(out))
                raw = bytearray(inflater.unconsumed_tail)
            except zlib.error:
                raise InvalidRequest("the body is not valid gzip", field="body") from None
        if len(out) > max_bytes:
            raise too_large
    if inflater is not None:
        try:
            out += inflater.flush()
        except zlib.error:
            raise InvalidRequest("the body is not valid gzip", field="body") from None
        if not inflater.eof:
            raise InvalidRequest("the gzip body is truncated", field="body")
        if len(out) > max_bytes:
            raise too_large
    return bytes(out)


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
        events = _body_decoder.decode(body).events
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", field="body") from None
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
