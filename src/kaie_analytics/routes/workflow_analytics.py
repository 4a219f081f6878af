from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from kaie_analytics.auth import Principal, require
from kaie_analytics.query import workflows as wq

router = APIRouter(tags=["workflow analytics"])


def _params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


@router.get("/v1/analytics/workflows/{workflow_id}")
async def workflow_metrics(
    workflow_id: str, request: Request, principal: Principal = Depends(require("analytics:read"))
) -> dict[str, Any]:
    """Metrics, trends and a gap-filled series for one workflow (spec/METRICS.md)."""
    query = wq.parse_metrics_query(principal.tenant, workflow_id, _params(request))
    data = await run_in_threadpool(wq.run_workflow_metrics, request.app.state.store, query)
    return {"data": data}


@router.get("/v1/analytics/workflows/{workflow_id}/performance")
async def workflow_performance(
    workflow_id: str, request: Request, principal: Principal = Depends(require("analytics:read"))
) -> dict[str, Any]:
    """Execution-time percentiles, throughput, error rates, nodes and channels."""
    query = wq.parse_performance_query(principal.tenant, workflow_id, _params(request))
    data = await run_in_threadpool(wq.run_workflow_performance, request.app.state.store, query)
    return {"data": data}
