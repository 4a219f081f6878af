"""Per-key, per-class rate limits (spec/OPERATIONS.md) on the ``limits`` library.

A moving window: the N-th request within any window is allowed, the N+1-th is
refused. The counters are in memory (one process) or, with ``KAIE_REDIS_URL``,
in Redis, where every API process counts against the same window. Every call
is asynchronous, so the event loop never waits on Redis; when Redis cannot be
reached the request is answered ``503 STORE_UNAVAILABLE`` (a limit that cannot
be counted is not waived).
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from kaie_analytics.errors import RateLimitExceeded
from kaie_analytics.shared_state import redis_calls

CLASSES = ("realtime", "historical", "reports", "export", "events", "default")


class InvalidRateLimits(ValueError):
    pass


DEFAULT_RATE_LIMITS = (
    "realtime=1000/hour,historical=100/hour,reports=50/hour,"
    "export=20/hour,events=36000/hour,default=1000/hour"
)


def parse_rate_limits(text: str) -> dict[str, RateLimitItem]:
    """``realtime=1000/hour,historical=100/hour,...`` -> {class: limit}.

    Classes the text does not name keep their default limit.
    """
    return _parse(DEFAULT_RATE_LIMITS) | _parse(text)


def _parse(text: str) -> dict[str, RateLimitItem]:
    out: dict[str, RateLimitItem] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, spec = part.partition("=")
        name = name.strip()
        if not sep or name not in CLASSES:
            raise InvalidRateLimits(
                f"KAIE_RATE_LIMITS: bad rate limit {part!r}: use CLASS=N/PERIOD with CLASS one of {', '.join(CLASSES)}"
            )
        try:
            out[name] = parse(spec.strip())
        except ValueError:
            raise InvalidRateLimits(
                f"KAIE_RATE_LIMITS: bad rate limit {part!r}: e.g. 100/hour"
            ) from None
    return out


def parse_limit(text: str, setting: str) -> RateLimitItem:
    try:
        return parse(text)
    except ValueError:
        raise InvalidRateLimits(f"{setting}: bad limit {text!r}: e.g. 20/minute") from None


class RateLimiter:
    def __init__(
        self,
        limits: dict[str, RateLimitItem],
        redis: Any = None,
        auth_failures: RateLimitItem | None = None,
    ) -> None:
        """``redis``: a ``redis.asyncio.Redis`` (``shared_state.connect_redis``), or None
        for counters in this process's memory."""
        self.limits = limits
        self.auth_failures = auth_failures or parse("20/minute")
        if redis is None:
            storage = storage_from_string("async+memory://")
        else:  # the client's own pool: one set of connections, closed with the client
            storage = storage_from_string("async+redis://", implementation="redispy",
                                          key_prefix="kaie-limits",
                                          connection_pool=redis.connection_pool)  # fmt: skip
        self._limiter = MovingWindowRateLimiter(storage)
        self._redis = redis is not None

    def _calls(self) -> AbstractAsyncContextManager[None]:
        return redis_calls() if self._redis else nullcontext()

    async def refuse_locked_out(self, address: str) -> None:
        """429 for a client address that failed to authenticate too often lately.

        Throttles key guessing (and the log lines it writes) before any lookup.
        """
        item = self.auth_failures
        async with self._calls():
            allowed = await self._limiter.test(item, "auth-failures", address)
            if allowed:
                return
            stats = await self._limiter.get_window_stats(item, "auth-failures", address)
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimitExceeded(
            f"too many failed authentications from this address (at most {item.amount}"
            f" per {item.get_expiry()} s); retry in {retry} s",
            field="Authorization",
            headers={"Retry-After": str(retry)},
        )

    async def count_auth_failure(self, address: str) -> None:
        async with self._calls():
            await self._limiter.hit(self.auth_failures, "auth-failures", address)

    async def hit(self, key_prefix: str, klass: str) -> dict[str, str]:
        """Count one request; return the headers, or raise 429 when over the limit."""
        item = self.limits[klass]
        async with self._calls():
            allowed = await self._limiter.hit(item, key_prefix, klass)
            stats = await self._limiter.get_window_stats(item, key_prefix, klass)
        reset = math.ceil(stats.reset_time)
        headers = {
            "X-RateLimit-Limit": str(item.amount),
            "X-RateLimit-Remaining": str(max(0, stats.remaining)),
            "X-RateLimit-Reset": str(reset),
        }
        if not allowed:
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimitExceeded(
                f"at most {item.amount} {klass} requests per {item.get_expiry()} s for this key;"
                f" retry in {retry} s",
                headers=headers | {"Retry-After": str(retry)},
            )
        return headers
