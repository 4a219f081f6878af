from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from kaie_analytics.analytics.facts import Workflow
from kaie_analytics.auth import Principal, require
from kaie_analytics.errors import InvalidParameter
from kaie_analytics.ingest.validate import EventError, check_identifier
from kaie_analytics.request_body import read_json
from kaie_analytics.routes import openapi as api
from kaie_analytics.routes import schemas

router = APIRouter(tags=["workflows"])


def render(wf: Workflow) -> dict[str, Any]:
    return {
        "workflow_id": wf.workflow_id,
        "name": wf.name,
        "created_at": wf.created_at.isoformat(timespec="seconds") + "Z",
    }


@router.get("/v1/workflows", response_model=None, responses=api.answers(schemas.WorkflowsAnswer))
async def list_workflows(
    request: Request, principal: Principal = Depends(require("analytics:read"))
) -> dict[str, Any]:
    """The tenant's workflows: every workflow any event named, or created here."""
    return {"data": [render(w) for w in request.app.state.engine.workflows(principal.tenant)]}


@router.put(
    "/v1/workflows/{workflow_id}",
    response_model=None,
    responses=api.answers(schemas.WorkflowAnswer, 400, 413),
    openapi_extra=api.body(schemas.WorkflowBody),
)
async def put_workflow(
    workflow_id: schemas.WorkflowId,
    request: Request,
    principal: Principal = Depends(require("events:write")),
) -> dict[str, Any]:
    """Create or rename a workflow: ``{"name": "..."}`` (1 to 200 characters)."""
    try:
        check_identifier("workflow_id", workflow_id)
    except EventError as exc:
        raise InvalidParameter(exc.message, field="workflow_id") from None
    try:
        body = schemas.WorkflowBody.model_validate(await read_json(request))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidParameter(f"{field}: {first['msg']}", field=field) from None
    wf = await asyncio.wrap_future(
        request.app.state.engine.put_workflow(principal.tenant, workflow_id, body.name)
    )
    await request.app.state.versions.bump(principal.tenant)
    return {"data": render(wf)}
