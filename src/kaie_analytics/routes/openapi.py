"""What each route declares in the OpenAPI description: its query parameters,
its body, its answer and every error status it can answer with.

The query parameters are parsed by the analytics modules (so that every error
has the seed's shape); their description lives here, once, with the allowed
values taken from the same constants the parsers use.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kaie_analytics.analytics.metrics import WORKFLOW_METRICS
from kaie_analytics.analytics.periods import (
    CHANNEL_PATTERN,
    FALSE_WORDS,
    GRANULARITIES,
    IDENTIFIER_PATTERN,
    TRUE_WORDS,
)
from kaie_analytics.analytics.workflows import GROUP_BY
from kaie_analytics.routes.schemas import DATE, EVENT_EXAMPLE, TIMEZONE, ErrorBody

_STATUS_TEXT = {
    400: "Invalid parameter, body or date range (the error names the field)",
    401: "Missing, unknown or revoked API key",
    403: "The key lacks the scope this endpoint needs",
    404: "No such workflow, report or export for this tenant",
    409: "The report or export is not finished yet",
    410: "The report, export or download link has expired",
    413: "The request body is larger than the limit",
    422: "Invalid granularity",
    429: "Rate limit exceeded (see Retry-After)",
    500: "The report or export failed (the error gives the reason)",
    503: "A store is unavailable or the query took too long; retry later",
}
#: Every endpoint that takes an API key.
AUTHENTICATED = (401, 403, 429, 503)


def answers(model: type[BaseModel] | None, *statuses: int, ok: int = 200,
            media: tuple[str, ...] = ()) -> dict[int | str, dict[str, Any]]:  # fmt: skip
    """``responses=`` for a route: its answer and its error statuses, each with the
    seed's error shape."""
    out: dict[int | str, dict[str, Any]] = {}
    if model is not None:
        out[ok] = {"model": model, "description": "The answer"}
    else:
        out[ok] = {"description": "The file", "content": {m: {} for m in media}}
    for status in sorted({*statuses, *AUTHENTICATED}):
        if status == 304:  # no body
            out[status] = {"description": "Not modified: the answer the `ETag` sent names"}
        else:
            out[status] = {"model": ErrorBody, "description": _STATUS_TEXT[status]}
    return out


def _param(name: str, schema: dict[str, Any], description: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description, **more}  # fmt: skip


def _list(name: str, values: tuple[str, ...], description: str) -> dict[str, Any]:
    items = {"type": "string", "enum": list(values)}
    return _param(name, {"type": "array", "items": items}, description, style="form",
                  explode=False)  # fmt: skip


def _flag(name: str, default: bool, description: str) -> dict[str, Any]:
    """A yes/no parameter (``periods.parse_bool``); empty is its default."""
    spellings = [*sorted(TRUE_WORDS | FALSE_WORDS), ""]
    return _param(name, {"type": "string", "enum": spellings, "default": str(default).lower()},
                  description)  # fmt: skip


def _text(name: str, description: str) -> dict[str, Any]:
    """A filter (``periods.parse_filter``): a channel name, or an identifier."""
    pattern = (CHANNEL_PATTERN if name == "channel" else IDENTIFIER_PATTERN).pattern
    # Empty is no filter, as absent is.
    return _param(name, {"type": "string", "pattern": f"^({pattern[1:-1]})?$"}, description)


PERIOD = [
    _param("start_date", DATE, "First day (YYYY-MM-DD, in `timezone`) or an RFC 3339 time;"
           " default: 30 days before the end"),
    _param("end_date", DATE, "Last day, included (YYYY-MM-DD) or an RFC 3339 time; default:"
           " now. At most 366 days after the start"),
    _param("timezone", TIMEZONE | {"default": "UTC"},
           "IANA time zone of the dates and of the buckets"),
]  # fmt: skip

#: The parameters of a signed download link (``download_url``): with them no key is needed.
SIGNED_LINK = [
    _param("tenant", {"type": "string"}, "Signed link: the tenant"),
    _param("key", {"type": "string"}, "Signed link: the prefix of the key it was made with"),
    _param("expires", {"type": "integer"}, "Signed link: when it expires (Unix seconds)"),
    _param("signature", {"type": "string"}, "Signed link: its signature"),
]

QUERY: dict[str, list[dict[str, Any]]] = {
    "workflow_metrics": [
        *PERIOD,
        _param("granularity", {"type": "string", "enum": list(GRANULARITIES), "default": "day"},
               "Size of the buckets of `daily_metrics`"),
        _list("metrics", WORKFLOW_METRICS, "The metrics to answer with (comma-separated or"
              " repeated); default: all"),
        _list("group_by", GROUP_BY, "Also answer per combination of these fields"),
    ],
    "workflow_performance": [
        *PERIOD,
        _flag("include_nodes", True, "Answer with `node_performance`"),
        _flag("include_channels", True, "Answer with `channel_performance`"),
    ],
    "engagement": [
        *PERIOD,
        _text("customer_segment", "Only customers of this segment"),
        _text("channel", "Only this channel"),
    ],
    "journey": [
        *PERIOD,
        _text("journey_type", "The journey type (needed when the tenant has several)"),
        _flag("include_dropoffs", True, "Answer with `drop_off_points`"),
    ],
    "realtime": [
        _text("workflow_id", "Only this workflow"),
        _text("channel", "Only this channel"),
        _flag("include_system", False, "Also count system workflows"),
    ],
}  # fmt: skip


def query(operation: str) -> dict[str, Any]:
    """``openapi_extra=`` for a route whose query parameters are in ``QUERY``."""
    return {"parameters": QUERY[operation]}


#: The bodies routes read themselves (bounded while read), described by these models.
_BODIES: list[type[BaseModel]] = []


def body(model: type[BaseModel], more: dict[str, Any] | None = None) -> dict[str, Any]:
    """``openapi_extra=`` for a route that reads its body itself: its JSON shape, and any
    other media types it takes (``more``, by media type)."""
    _BODIES.append(model)
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    return {"requestBody": {"required": True, "content": content | (more or {})}}


#: ``POST /v1/events`` also takes NDJSON: one event per line, up to 10,000 lines.
NDJSON_EVENTS = {
    "application/x-ndjson": {
        "schema": {"type": "string"},
        "example": json.dumps(EVENT_EXAMPLE) + "\n",
    }
}


def install(app: FastAPI) -> None:
    """The app's OpenAPI: FastAPI's, with the bodies' schemas and the bearer scheme."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)  # fmt: skip
        components = spec.setdefault("components", {})
        _, defs = models_json_schema([(m, "validation") for m in _BODIES],
                                     ref_template="#/components/schemas/{model}")  # fmt: skip
        components.setdefault("schemas", {}).update(defs.get("$defs", {}))
        components["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "An API key: `Authorization: Bearer kaie_...`"},
        }  # fmt: skip
        for operations in spec["paths"].values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                # FastAPI's own 422 for path parameters: they are plain strings, never refused.
                if "HTTPValidationError" in str(responses.get("422", "")):
                    del responses["422"]
                if "401" in responses:
                    operation.setdefault("security", [{"bearerAuth": []}])
        for unused in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(unused, None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
