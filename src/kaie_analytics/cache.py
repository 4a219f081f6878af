"""Response cache for the historical endpoints.

Keyed by tenant and the parsed, frozen query object (so equivalent requests
share an entry); an entry is valid only while the tenant's data version is the
one it was computed at, and every commit that touches the tenant bumps that
version. Tenants never share an entry: the tenant is part of the key.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import orjson
from cachetools import LRUCache
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

CACHE_CONTROL = "private, no-cache"


@dataclass(frozen=True, slots=True)
class _Entry:
    version: int
    body: bytes
    etag: str


class ResponseCache:
    def __init__(self, max_entries: int = 2048) -> None:
        self._entries: LRUCache[Hashable, _Entry] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()

    def get(self, key: Hashable, version: int) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
        return entry if entry is not None and entry.version == version else None

    def put(self, key: Hashable, entry: _Entry) -> None:
        with self._lock:
            self._entries[key] = entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


async def cached_json(
    request: Request, tenant: str, query: Hashable, compute: Callable[[], Any]
) -> Response:
    """Answer ``{"data": compute()}`` from the cache when fresh, with ETag / 304."""
    cache: ResponseCache = request.app.state.cache
    key = (tenant, query)
    version = request.app.state.store.data_version(tenant)
    # A client may ask for a fresh computation, as HTTP caches allow.
    bypass = "no-cache" in request.headers.get("cache-control", "").lower()
    entry = None if bypass else cache.get(key, version)
    status = "hit"
    if entry is None:
        status = "miss"
        data = await run_in_threadpool(compute)
        body = orjson.dumps({"data": data}, option=orjson.OPT_NON_STR_KEYS)
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        entry = _Entry(version, body, etag)
        cache.put(key, entry)
    headers = {"ETag": entry.etag, "Cache-Control": CACHE_CONTROL, "X-Cache": status}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and entry.etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)
