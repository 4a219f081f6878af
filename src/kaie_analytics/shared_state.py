"""What several API processes share through Redis (``KAIE_REDIS_URL``).

- **Data versions**: every commit of events for a tenant, through any process,
  increments the tenant's shared version; a cached answer is valid only while
  both the shared version and the local engine's are the ones it was computed
  at, so an ingest through one process invalidates the caches of all.
- **Rate-limit counters** (``ratelimit``) live in the same Redis.

With no Redis (one process), the shared version is always 0 and the local
engine's version alone decides. Every call is asynchronous and bounded by
short timeouts; when Redis cannot be reached, what needs it answers
``503 STORE_UNAVAILABLE``, and the next request tries again (the client
reconnects by itself).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from kaie_analytics.errors import StoreUnavailable

#: Seconds to wait for Redis to connect or answer before giving up on a request.
REDIS_TIMEOUT_S = 1.0
_VERSION_KEY = "kaie:data-version:"


def connect_redis(url: str | None) -> Any:
    """A Redis client (``redis.asyncio.Redis``) for ``url``, or None without one.

    Its connection pool is shared by the data versions and the rate limiter;
    it connects lazily, on the loop that first uses it.
    """
    if url is None:
        return None
    import redis.asyncio

    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        health_check_interval=10,
    )


@asynccontextmanager
async def redis_calls() -> AsyncIterator[None]:
    """Redis errors become ``503 STORE_UNAVAILABLE``."""
    import redis.exceptions

    try:
        yield
    except (redis.exceptions.RedisError, OSError) as exc:
        raise StoreUnavailable(
            "Redis (KAIE_REDIS_URL) cannot be reached; try again shortly"
        ) from exc


def bump_from_cli(url: str | None, tenants: list[str]) -> None:
    """After a command wrote events straight into a shared store (``ingest`` without
    ``--url``, ``copy-events``): the servers' cached answers of those tenants are stale."""
    if url is None or not tenants:
        return
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S * 5) as client:
            for tenant in tenants:
                client.incr(_VERSION_KEY + tenant)
    except (redis.exceptions.RedisError, OSError) as exc:
        raise StoreUnavailable("Redis (KAIE_REDIS_URL) cannot be reached") from exc


class DataVersions:
    """Per-tenant data versions shared by every process (0 without Redis)."""

    def __init__(self, client: Any = None) -> None:
        self._client = client  # redis.asyncio.Redis, or None

    async def current(self, tenant: str) -> int:
        if self._client is None:
            return 0
        async with redis_calls():
            value = await self._client.get(_VERSION_KEY + tenant)
        return int(value or 0)

    async def bump(self, tenant: str) -> None:
        """After a commit for ``tenant``: every process's cached answers of it are stale."""
        if self._client is not None:
            async with redis_calls():
                await self._client.incr(_VERSION_KEY + tenant)

    async def ping(self) -> bool:
        """Whether Redis answers (True without Redis: nothing to reach)."""
        if self._client is None:
            return True
        try:
            async with redis_calls():
                await self._client.ping()
        except StoreUnavailable:
            return False
        return True
