from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any

from fastapi import APIRouter, Depends, Request

from kaie_analytics.auth import Principal, require
from kaie_analytics.ingest.body import decode_events, read_body
from kaie_analytics.ingest.service import ValidatedBatch, summarize, validate_batch
from kaie_analytics.store.duckdb_store import AppendResult

router = APIRouter(tags=["events"])


@router.post("/v1/events")
async def post_events(
    request: Request, principal: Principal = Depends(require("events:write", "events"))
) -> dict[str, Any]:
    """Ingest a batch of events (JSON or NDJSON, optionally gzipped).

    Answers only after every accepted event is durably committed.
    """
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    content_type = request.headers.get("content-type")
    store = request.app.state.store

    def validate_and_queue() -> tuple[ValidatedBatch, Future[AppendResult] | None]:
        batch = validate_batch(decode_events(body, content_type))
        return batch, store.append(principal.tenant, batch.rows) if batch.rows else None

    batch, pending = validate_and_queue()
    result = await asyncio.wrap_future(pending) if pending else AppendResult(0, 0)
    summary = summarize(batch, result)
    events_total = request.app.state.telemetry.events
    events_total.labels("accepted").inc(summary.accepted)
    events_total.labels("duplicate").inc(summary.duplicates)
    events_total.labels("rejected").inc(summary.rejected)
    return {"data": summary.as_dict()}
