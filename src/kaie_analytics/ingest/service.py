"""The ingestion path shared by the HTTP endpoint, the CLI and the demo."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kaie_analytics.ingest.validate import EventError, ValidEvent, validate_event
from kaie_analytics.store.duckdb_store import AppendResult, DuckDBEventStore


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


def ingest_items(store: DuckDBEventStore, tenant: str, items: list[Any]) -> IngestSummary:
    """Validate and durably store (blocking): for the CLI and the demo."""
    batch = validate_batch(items)
    result = store.append(tenant, batch.rows).result() if batch.rows else AppendResult(0, 0)
    return summarize(batch, result)
