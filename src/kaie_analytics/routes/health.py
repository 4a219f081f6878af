from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from kaie_analytics.errors import StoreUnavailable
from kaie_analytics.routes.schemas import ErrorBody

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {"model": ErrorBody, "description": "A store does not answer (which, in the error)"}
    },
)
async def readyz(request: Request) -> dict[str, str]:
    """Readiness: the event store, the metadata database and Redis (if used) answer."""
    if not await run_in_threadpool(request.app.state.engine.ping):
        raise StoreUnavailable("the event store does not answer")
    await run_in_threadpool(request.app.state.meta.has_keys)  # 503 when unreachable
    if not await request.app.state.versions.ping():
        raise StoreUnavailable("Redis (KAIE_REDIS_URL) does not answer")
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {}}}
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests and latencies per route and status, events, jobs."""
    body = generate_latest(request.app.state.telemetry.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
