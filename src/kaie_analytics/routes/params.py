from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from kaie_analytics.analytics.runners import QueryRunner
from kaie_analytics.cache import cached_response, wants_fresh
from kaie_analytics.errors import InvalidParameter
from kaie_analytics.routes.openapi import QUERY


def query_params(request: Request, operation: str) -> dict[str, list[str]]:
    """Query parameters as lists, keeping repeated ones (``metrics=a&metrics=b``).

    A name the operation does not take (``routes.openapi.QUERY``) is refused, so a
    misspelt parameter is an error rather than silently ignored.
    """
    known = {p["name"] for p in QUERY[operation]}
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key not in known:
            raise InvalidParameter(
                f"unknown parameter {key[:64]!r}; this endpoint takes: {', '.join(sorted(known))}",
                field=key[:64],
            )
        params.setdefault(key, []).append(value)
    return params


async def run_cached(request: Request, runner: QueryRunner[Any]) -> Response:
    """Run a query through the app's response cache, answering with ETag / 304."""
    entry, hit = await runner.run(request.app.state.cache, fresh=wants_fresh(request))
    return cached_response(request, entry, hit=hit)
