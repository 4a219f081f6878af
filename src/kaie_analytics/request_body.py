"""Request bodies, bounded while they are read, gzip undone in linear time.

Every endpoint that takes a body reads it here: ``POST /v1/events`` up to
``KAIE_MAX_BODY_BYTES`` (after gzip), the JSON bodies of reports, exports and
workflows up to 1 MiB. Nothing is read past the limit but a bounded amount that
is discarded so that the client hears the ``413``.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import orjson
from starlette.requests import Request

from kaie_analytics.errors import InvalidRequest, PayloadTooLarge

MAX_JSON_BODY = 1024 * 1024
#: After a body is found too large, up to this much more is read and thrown away:
#: a client that sends its whole body before it reads (Python's urllib, for one)
#: then gets the 413 instead of a reset connection. Past it the connection closes.
DRAIN_BYTES = 64 * 1024 * 1024


async def _refuse(chunks: AsyncIterator[bytes] | None, max_bytes: int, what: str) -> NoReturn:
    drained = chunks is not None
    if chunks is not None:
        seen = 0
        async for chunk in chunks:
            seen += len(chunk)
            if seen > DRAIN_BYTES:
                drained = False
                break
    raise PayloadTooLarge(
        f"the body must be at most {max_bytes} bytes{what}",
        field="body",
        headers={} if drained else {"Connection": "close"},
    )


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, with a ``Content-Encoding: gzip`` undone, refusing more than ``max_bytes``.

    A gzip body is one gzip member: bytes after its end are an error. Its
    compressed size is bounded by ``max_bytes`` too.
    """
    encoding = request.headers.get("content-encoding", "identity").lower().strip()
    if encoding not in ("identity", "gzip"):
        raise InvalidRequest(
            f"unsupported Content-Encoding {encoding[:40]!r}; use gzip or none",
            field="Content-Encoding",
        )
    what = " (after gzip)" if encoding == "gzip" else ""
    chunks = request.stream()
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        expects = "100-continue" in request.headers.get("expect", "").lower()
        # A client waiting for "100 Continue" has not sent the body: answer at once.
        fits = int(declared) - max_bytes <= DRAIN_BYTES
        await _refuse(None if expects or not fits else chunks, max_bytes, what)
    inflater = zlib.decompressobj(wbits=31) if encoding == "gzip" else None
    out = bytearray()
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > max_bytes:
            await _refuse(chunks, max_bytes, what)
        if inflater is None:
            out += chunk
            continue
        if inflater.eof:
            if chunk:
                raise _trailing()
            continue
        try:
            # max_length bounds the output; 0 would mean "no bound", hence the + 1.
            out += inflater.decompress(chunk, max_bytes + 1 - len(out))
        except zlib.error:
            raise InvalidRequest("the body is not valid gzip", field="body") from None
        if len(out) > max_bytes or inflater.unconsumed_tail:
            await _refuse(chunks, max_bytes, what)
        if inflater.unused_data:
            raise _trailing()
    if inflater is not None and not inflater.eof:
        raise InvalidRequest("the gzip body is truncated", field="body")
    return bytes(out)


def _trailing() -> InvalidRequest:
    return InvalidRequest(
        "the body holds bytes after the end of its gzip member; send one gzip member",
        field="body",
    )


async def read_json(request: Request, max_bytes: int = MAX_JSON_BODY) -> Any:
    """A JSON body of at most ``max_bytes`` (an empty body is ``{}``)."""
    raw = await read_body(request, max_bytes)
    try:
        return orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", field="body") from None
