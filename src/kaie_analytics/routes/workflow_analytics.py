from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from kaie_analytics.analytics import workflows as wq
from kaie_analytics.auth import Principal, require
from kaie_analytics.routes import openapi as api
from kaie_analytics.routes import schemas
from kaie_analytics.routes.params import query_params, run_cached

router = APIRouter(tags=["workflow analytics"])


@router.get(
    "/v1/analytics/workflows/{workflow_id}",
    responses=api.answers(schemas.WorkflowMetricsAnswer, 304, 400, 404, 422),
    openapi_extra=api.query("workflow_metrics"),
)
async def workflow_metrics(
    workflow_id: schemas.WorkflowId,
    request: Request,
    principal: Principal = Depends(require("analytics:read", "historical")),
) -> Response:
    """Metrics, trends and a gap-filled series for one workflow (spec/METRICS.md)."""
    query = wq.parse_metrics_query(
        principal.tenant, workflow_id, query_params(request, "workflow_metrics")
    )
    return await run_cached(request, wq.WorkflowMetricsRunner(request.app.state.engine, query))


@router.get(
    "/v1/analytics/workflows/{workflow_id}/performance",
    responses=api.answers(schemas.WorkflowPerformanceAnswer, 304, 400, 404),
    openapi_extra=api.query("workflow_performance"),
)
async def workflow_performance(
    workflow_id: schemas.WorkflowId,
    request: Request,
    principal: Principal = Depends(require("analytics:read", "historical")),
) -> Response:
    """Execution-time percentiles, throughput, error rates, nodes and channels."""
    query = wq.parse_performance_query(
        principal.tenant, workflow_id, query_params(request, "workflow_performance")
    )
    return await run_cached(request, wq.WorkflowPerformanceRunner(request.app.state.engine, query))
