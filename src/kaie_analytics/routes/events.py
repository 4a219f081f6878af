from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from kaie_analytics.analytics.facts import AppendResult
from kaie_analytics.auth import Principal, require
from kaie_analytics.ingest.service import prepare_body, summarize
from kaie_analytics.request_body import read_body
from kaie_analytics.routes import openapi as api
from kaie_analytics.routes import schemas

router = APIRouter(tags=["events"])


@router.post(
    "/v1/events",
    response_model=None,
    responses=api.answers(schemas.IngestAnswer, 400, 413),
    openapi_extra=api.body(schemas.EventsBody, api.NDJSON_EVENTS),
)
async def post_events(
    request: Request, principal: Principal = Depends(require("events:write", "events"))
) -> dict[str, Any]:
    """Ingest a batch of events (JSON or NDJSON, optionally gzipped).

    Answers only after every accepted event is durably committed.
    """
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    content_type = request.headers.get("content-type")
    engine = request.app.state.engine
    pool = request.app.state.ingest_pool
    if pool is not None:
        loop = asyncio.get_running_loop()
        batch, prepared = await loop.run_in_executor(
            pool, prepare_body, body, content_type, principal.tenant, engine.prepare
        )
    else:  # a worker thread, so a large batch never stalls the other requests
        batch, prepared = await run_in_threadpool(
            prepare_body, body, content_type, principal.tenant, engine.prepare
        )
    if prepared is not None:
        result = await asyncio.wrap_future(engine.append_prepared(principal.tenant, prepared))
    else:
        result = AppendResult(0, 0)
    # Even for a batch of duplicates: a retry after a failed bump must still bump.
    await request.app.state.versions.bump(principal.tenant)
    summary = summarize(batch, result)
    events_total = request.app.state.telemetry.events
    events_total.labels("accepted").inc(summary.accepted)
    events_total.labels("duplicate").inc(summary.duplicates)
    events_total.labels("rejected").inc(summary.rejected)
    return {"data": summary.as_dict()}
