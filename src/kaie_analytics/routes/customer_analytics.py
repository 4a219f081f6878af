from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from kaie_analytics.analytics import customers as cq
from kaie_analytics.auth import Principal, require
from kaie_analytics.routes import openapi as api
from kaie_analytics.routes import schemas
from kaie_analytics.routes.params import query_params, run_cached

router = APIRouter(tags=["customer analytics"])


@router.get(
    "/v1/analytics/customers/engagement",
    responses=api.answers(schemas.EngagementAnswer, 304, 400),
    openapi_extra=api.query("engagement"),
)
async def customer_engagement(
    request: Request, principal: Principal = Depends(require("analytics:read", "historical"))
) -> Response:
    """Active, new and returning customers, sessions, CSAT and NPS, by channel."""
    query = cq.parse_engagement_query(principal.tenant, query_params(request, "engagement"))
    return await run_cached(request, cq.EngagementRunner(request.app.state.engine, query))


@router.get(
    "/v1/analytics/customers/journey",
    responses=api.answers(schemas.JourneyAnswer, 304, 400),
    openapi_extra=api.query("journey"),
)
async def customer_journey(
    request: Request, principal: Principal = Depends(require("analytics:read", "historical"))
) -> Response:
    """A journey funnel: steps, completion rates, durations and drop-off points."""
    query = cq.parse_journey_query(principal.tenant, query_params(request, "journey"))
    return await run_cached(request, cq.JourneyRunner(request.app.state.engine, query))
