from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> dict[str, str]:
    """Readiness: the event store answers a query."""
    from starlette.concurrency import run_in_threadpool

    from kaie_analytics.errors import StoreUnavailable

    if not await run_in_threadpool(request.app.state.store.ping):
        raise StoreUnavailable("the event store does not answer")
    return {"status": "ready"}
