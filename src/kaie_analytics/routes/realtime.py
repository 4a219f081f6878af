from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from kaie_analytics.analytics import realtime as rq
from kaie_analytics.auth import Principal, require
from kaie_analytics.routes import openapi as api
from kaie_analytics.routes import schemas
from kaie_analytics.routes.params import query_params

router = APIRouter(tags=["realtime"])


def system_health(request: Request, store_ok: bool) -> tuple[str, float | None]:
    """healthy / degraded / unhealthy, and the mean API latency of the last 5 minutes."""
    recent = request.app.state.telemetry.recent()
    mean_ms = sum(d for _, d in recent) / len(recent) * 1000 if recent else None
    if not store_ok:
        return "unhealthy", mean_ms
    if recent:
        errors = sum(1 for s, _ in recent if s >= 500)
        latencies = sorted(d for _, d in recent)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * (len(latencies) - 1) + 0.5))]
        if errors / len(recent) > 0.05 or p95 > 1.0:
            return "degraded", mean_ms
    return "healthy", mean_ms


@router.get(
    "/v1/analytics/realtime",
    responses=api.answers(schemas.RealtimeAnswer, 400),
    openapi_extra=api.query("realtime"),
)
async def realtime(
    request: Request, principal: Principal = Depends(require("analytics:read", "realtime"))
) -> Response:
    """Live numbers: running executions, the last hour's messages and reply times."""
    query = rq.parse_realtime_query(principal.tenant, query_params(request, "realtime"))
    engine = request.app.state.engine
    runner = rq.RealtimeRunner(engine, query, health=lambda: system_health(request, engine.ping()))
    entry, _ = await runner.run()
    return Response(entry.body, media_type="application/json")
