"""The dashboard's page and files (``kaie_analytics.dashboard``), at ``/``.

plotly.js comes from the ``plotly`` Python package's own copy. A strict
Content-Security-Policy keeps the page to this server's scripts and API, so
an injected script could not read the key from session storage and send it
elsewhere.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import FileResponse

router = APIRouter(include_in_schema=False)

_STATIC = Path(str(files("kaie_analytics.dashboard") / "static"))
_PLOTLY = Path(str(files("plotly") / "package_data" / "plotly.min.js"))
_FILES = {"app.js": _STATIC / "app.js", "app.css": _STATIC / "app.css", "plotly.min.js": _PLOTLY}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'"
    " 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none';"
    " base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(_STATIC / "index.html", media_type="text/html", headers=_HEADERS)


@router.get("/dashboard/{name}")
async def asset(name: str) -> FileResponse:
    from kaie_analytics.errors import NotFound

    path = _FILES.get(name)
    if path is None:
        raise NotFound("no such dashboard file")
    kind = "text/javascript" if name.endswith(".js") else "text/css"
    return FileResponse(path, media_type=kind, headers=_HEADERS | {"Cache-Control": "no-cache"})
