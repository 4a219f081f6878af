"""API keys -> tenant and scopes, as a FastAPI dependency."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from cachetools import TTLCache
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from kaie_analytics.errors import Forbidden, Unauthorized
from kaie_analytics.ratelimit import RateLimiter
from kaie_analytics.store.meta import ApiKey, MetaStore

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_prefix: str
    scopes: frozenset[str]


class KeyCache:
    """Remembers key lookups for ``ttl`` seconds, so revocation takes effect within it.

    Each process has its own; with several processes the metadata database is
    shared, so a key revoked through any of them is refused by all within ``ttl``
    (``KAIE_KEY_CACHE_TTL_S``, 2 s by default). A lookup that misses reads the
    database in a worker thread, never on the event loop.
    """

    def __init__(self, meta: MetaStore, ttl: float) -> None:
        self.meta = meta
        self._keys: TTLCache[str, ApiKey | None] = TTLCache(10_000, ttl)
        self._active: TTLCache[str, bool] = TTLCache(10_000, ttl)
        self._lock = threading.Lock()

    async def _cached(self, cache: TTLCache[str, T], key: str, load: Callable[[str], T]) -> T:
        with self._lock:
            if key in cache:
                return cache[key]
        value = await run_in_threadpool(load, key)
        with self._lock:
            cache[key] = value
        return value

    async def lookup(self, key: str) -> ApiKey | None:
        """The active key record of a full secret, or None."""
        return await self._cached(self._keys, key, self.meta.authenticate)

    async def is_active(self, prefix: str) -> bool:
        """Whether the key with this prefix exists and is not revoked."""
        return await self._cached(self._active, prefix, self.meta.key_is_active)

    def clear(self) -> None:
        """Forget every lookup: the next request of each key reads the metadata again."""
        with self._lock:
            self._keys.clear()
            self._active.clear()


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "send the API key as 'Authorization: Bearer <key>'", field="Authorization"
        )
    return token.strip()


def require(scope: str, limit_class: str = "default") -> Callable[[Request], Awaitable[Principal]]:
    """Dependency: the request's principal, which must hold ``scope``.

    It also counts the request against the key's ``limit_class`` rate limit and
    leaves the rate-limit headers for the response in the request state.
    """

    async def dependency(request: Request) -> Principal:
        limiter: RateLimiter = request.app.state.limiter
        address = request.client.host if request.client else "unknown"
        await limiter.refuse_locked_out(address)
        try:
            token = _bearer(request)
            cache: KeyCache = request.app.state.keys
            record = await cache.lookup(token)
            if record is None:
                raise Unauthorized(
                    "the API key is unknown or revoked", field="Authorization", invalid_token=True
                )
        except Unauthorized:
            # A key that was sent and refused: a guess, or a client flooding the log.
            # (No Authorization header at all is no attempt, and is not counted.)
            if "authorization" in request.headers:
                await limiter.count_auth_failure(address)
            raise
        if scope not in record.scopes:
            raise Forbidden(f"this endpoint needs the scope {scope!r}", field="Authorization")
        principal = Principal(record.tenant, record.prefix, record.scopes)
        request.state.principal = principal
        request.state.rate_headers = await limiter.hit(record.prefix, limit_class)
        return principal

    return dependency
