"""API keys -> tenant and scopes, as a FastAPI dependency."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from kaie_analytics.errors import Forbidden, Unauthorized
from kaie_analytics.ratelimit import RateLimiter
from kaie_analytics.store.meta import ApiKey, MetaStore


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_prefix: str
    scopes: frozenset[str]


class KeyCache:
    """Remembers key lookups for ``ttl`` seconds, so revocation takes effect within it."""

    def __init__(self, meta: MetaStore, ttl: float) -> None:
        self.meta = meta
        self.ttl = ttl
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}
        self._active: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def lookup(self, key: str) -> ApiKey | None:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        record = self.meta.authenticate(key)
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key] = (now, record)
        return record

    def is_active(self, prefix: str) -> bool:
        """Whether the key with this prefix exists and is not revoked (cached alike)."""
        now = time.monotonic()
        with self._lock:
            hit = self._active.get(prefix)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        active = self.meta.key_is_active(prefix)
        with self._lock:
            if len(self._active) > 10_000:
                self._active.clear()
            self._active[prefix] = (now, active)
        return active


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
        limiter.refuse_locked_out(address)
        try:
            token = _bearer(request)
            cache: KeyCache = request.app.state.keys
            record = cache.lookup(token)
            if record is None:
                raise Unauthorized(
                    "the API key is unknown or revoked", field="Authorization", invalid_token=True
                )
        except Unauthorized:
            limiter.count_auth_failure(address)
            raise
        if scope not in record.scopes:
            raise Forbidden(f"this endpoint needs the scope {scope!r}", field="Authorization")
        principal = Principal(record.tenant, record.prefix, record.scopes)
        request.state.principal = principal
        request.state.rate_headers = limiter.hit(record.prefix, limit_class)
        return principal

    return dependency
