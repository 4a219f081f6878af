"""The ingestion path shared by the HTTP endpoint, the CLI and the demo."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kaie_analytics.analytics.facts import AppendResult, EventEngine
from kaie_analytics.ingest.body import decode_events
from kaie_analytics.ingest.validate import EventError, ValidEvent, validate_event


@dataclass
class ValidatedBatch:
    rows: list[ValidEvent]
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class IngestSummary:
    accepted: int
    duplicates: int
    rejected: int
    errors: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": self.errors,
        }


def validate_batch(items: list[Any], now: datetime | None = None) -> ValidatedBatch:
    """Validate each raw event on its own; keep the rows, list the errors by index."""
    now = now or datetime.now(UTC)
    batch = ValidatedBatch(rows=[])
    for index, item in enumerate(items):
        try:
            batch.rows.append(validate_event(item, now))
        except EventError as exc:
            batch.errors.append(
                {
                    "index": index,
                    "code": "INVALID_EVENT",
                    "field": exc.field,
                    "message": exc.message,
                }
            )
    return batch


def summarize(batch: ValidatedBatch, result: AppendResult) -> IngestSummary:
    return IngestSummary(
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=len(batch.errors),
        errors=batch.errors,
    )


def ingest_items(store: EventEngine, tenant: str, items: list[Any]) -> IngestSummary:
    """Validate and durably store (blocking): for the CLI and the demo."""
    batch = validate_batch(items)
    result = store.append(tenant, batch.rows).result() if batch.rows else AppendResult(0, 0)
    return summarize(batch, result)


def prepare_body(
    body: bytes,
    content_type: str | None,
    tenant: str,
    prepare: Callable[[str, list[ValidEvent]], Any],
) -> tuple[ValidatedBatch, Any]:
    """Decode, validate and prepare a request body; runs in an ingest process.

    Everything here is pure CPU work on the request's own bytes, so a pool of
    processes can do it in parallel while the server's writer commits.
    ``prepare`` is the engine's (``EventEngine.prepare``, a plain function).
    """
    batch = validate_batch(decode_events(body, content_type))
    prepared = prepare(tenant, batch.rows) if batch.rows else None
    batch.rows = []  # the prepared table carries them now; do not ship them twice
    return batch, prepared


def warm_up() -> None:
    """Import everything an ingest process needs before the first request."""
