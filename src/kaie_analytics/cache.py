"""Response cache for the historical endpoints, and its HTTP face (ETag, 304).

Keyed by tenant, query kind and the parsed, frozen query object (so equivalent
requests share an entry); an entry is valid only while the tenant's data
version is the one it was computed at, and every commit that touches the
tenant bumps that version. The version has two parts: the local engine's
(its own commits) and the one shared by every process through Redis
(``shared_state.DataVersions``), so an ingest through any process makes every
process's entries of that tenant stale. Tenants never share an entry: the
tenant is part of the key. Filled by the query runners (``analytics.runners``).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass

from cachetools import LRUCache
from starlette.requests import Request
from starlette.responses import Response

from kaie_analytics.shared_state import DataVersions

CACHE_CONTROL = "private, no-cache"


@dataclass(frozen=True, slots=True)
class Entry:
    """An answer's JSON body, the data version it was computed at, and its ETag."""

    version: tuple[int, int]  # (the local engine's, the shared one)
    body: bytes
    etag: str


class ResponseCache:
    def __init__(self, versions: DataVersions | None = None, max_entries: int = 2048) -> None:
        self.versions = versions or DataVersions(None)
        self._entries: LRUCache[Hashable, Entry] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()

    def get(self, key: Hashable, version: tuple[int, int]) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
        return entry if entry is not None and entry.version == version else None

    def put(self, key: Hashable, entry: Entry) -> None:
        with self._lock:
            self._entries[key] = entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def wants_fresh(request: Request) -> bool:
    """A client may ask for a fresh computation, as HTTP caches allow."""
    return "no-cache" in request.headers.get("cache-control", "").lower()


def cached_response(request: Request, entry: Entry, *, hit: bool) -> Response:
    """The entry as a response, or ``304`` when the client holds it (If-None-Match)."""
    headers = {
        "ETag": entry.etag,
        "Cache-Control": CACHE_CONTROL,
        "X-Cache": "hit" if hit else "miss",
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and entry.etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)
