from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from kaie_analytics.analytics.runners import QueryRunner
from kaie_analytics.cache import cached_response, wants_fresh


def query_params(request: Request) -> dict[str, list[str]]:
    """Query parameters as lists, keeping repeated ones (``metrics=a&metrics=b``)."""
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


async def run_cached(request: Request, runner: QueryRunner[Any]) -> Response:
    """Run a query through the app's response cache, answering with ETag / 304."""
    entry, hit = await runner.run(request.app.state.cache, fresh=wants_fresh(request))
    return cached_response(request, entry, hit=hit)
