from __future__ import annotations

from starlette.requests import Request


def query_params(request: Request) -> dict[str, list[str]]:
    """Query parameters as lists, keeping repeated ones (``metrics=a&metrics=b``)."""
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params
