"""What the sync and async clients share: batching, event ids, retries, errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

#: The server's limits for one ``POST /v1/events`` (NDJSON lines; bytes before gzip,
#: under its 5 MiB so that headers and a large last event still fit).
MAX_EVENTS_PER_REQUEST = 10_000
MAX_BYTES_PER_REQUEST = 4 * 1024 * 1024
NDJSON = "application/x-ndjson"


class KaieError(Exception):
    """An error answer of the API, in its shape: ``code``, ``message``, ``details``, ``field``."""

    def __init__(self, status: int, body: Mapping[str, Any] | None, text: str = "") -> None:
        error = (body or {}).get("error") or {}
        self.status = status
        self.code: str = error.get("code", "HTTP_ERROR")
        self.message: str = error.get("message", text[:200] or f"HTTP {status}")
        self.details: Any = error.get("details")
        self.field: str | None = error.get("field")
        super().__init__(f"{status} {self.code}: {self.message} ({self.details})")


@dataclass
class IngestReport:
    """The outcome of ``send_events``: counts, and each rejection with its index in
    the list given (not in the batch it travelled in)."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0

    def add(self, data: Mapping[str, Any], offset: int) -> None:
        self.accepted += data["accepted"]
        self.duplicates += data["duplicates"]
        self.rejected += data["rejected"]
        self.errors += [{**e, "index": e["index"] + offset} for e in data["errors"]]
        self.requests += 1


def content_id(event: Mapping[str, Any]) -> str:
    """An id from the event's content: the same event always gets the same one.

    It is the server's own for an event without an id (SHA-256 of its JSON with
    sorted keys, null fields left out), so an event sent with it or without an id
    is the same event.
    """
    present = {k: v for k, v in event.items() if v is not None}
    canonical = json.dumps(present, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Batch:
    """One request's worth of events: the gzipped NDJSON body, and where it starts."""

    offset: int
    count: int
    body: bytes


def ndjson_line(event: Mapping[str, Any] | bytes) -> bytes:
    """One event as an NDJSON line, with a content id if it has none.

    An event given as bytes (a line of a file) is sent as it is unless it is a
    JSON object without an id; a line that is not JSON goes to the server too,
    which rejects it with its index, so the others are not held up.
    """
    if isinstance(event, bytes):
        try:
            parsed = json.loads(event)
        except ValueError:
            return event.rstrip(b"\r\n") + b"\n"
        if not isinstance(parsed, dict) or parsed.get("id") is not None:
            return event.rstrip(b"\r\n") + b"\n"
        event = parsed
    if event.get("id") is None:
        event = {**event, "id": content_id(event)}
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def batches(events: Sequence[Mapping[str, Any] | bytes]) -> Iterator[Batch]:
    """The events as request bodies within the server's limits, ids filled in."""
    lines: list[bytes] = []
    size = offset = 0
    for i, event in enumerate(events):
        line = ndjson_line(event)
        if lines and (
            len(lines) == MAX_EVENTS_PER_REQUEST or size + len(line) > MAX_BYTES_PER_REQUEST
        ):
            yield Batch(offset, len(lines), gzip.compress(b"".join(lines), compresslevel=5))
            lines, size, offset = [], 0, i
        lines.append(line)
        size += len(line)
    if lines:
        yield Batch(offset, len(lines), gzip.compress(b"".join(lines), compresslevel=5))


def events_request(batch: Batch) -> dict[str, Any]:
    return {
        "content": batch.body,
        "headers": {"Content-Type": NDJSON, "Content-Encoding": "gzip"},
    }


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on connection errors, ``5xx`` and ``429``: exponential backoff with full
    jitter, waiting at least what ``Retry-After`` asks."""

    tries: int = 8
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        wait = random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))
        after = retry_after(response) if response is not None else None
        return max(wait, after) if after is not None else wait


def retryable(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), if the answer has one."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def data_of(response: httpx.Response) -> Any:
    """The ``data`` of a successful answer; ``KaieError`` for an error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict) and "data" in body:
        return body["data"]
    raise KaieError(response.status_code, body if isinstance(body, dict) else None, response.text)


def done(job: Mapping[str, Any]) -> bool:
    return job.get("status") in ("completed", "failed")
