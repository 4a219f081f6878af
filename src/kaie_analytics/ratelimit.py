"""Per-key, per-class rate limits (spec/OPERATIONS.md) on the ``limits`` library.

A moving window: the N-th request within any window is allowed, the N+1-th is
refused. The storage is in memory by default; ``KAIE_RATE_LIMIT_STORAGE`` may
name any storage ``limits`` supports (``redis://host:6379`` for several API
processes).
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from kaie_analytics.errors import RateLimitExceeded

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
        storage_uri: str = "memory://",
        auth_failures: RateLimitItem | None = None,
    ) -> None:
        self.limits = limits
        self.auth_failures = auth_failures or parse("20/minute")
        self._limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def refuse_locked_out(self, address: str) -> None:
        """429 for a client address that failed to authenticate too often lately.

        Throttles key guessing (and the log lines it writes) before any lookup.
        """
        item = self.auth_failures
        if not self._limiter.test(item, "auth-failures", address):
            stats = self._limiter.get_window_stats(item, "auth-failures", address)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            raise RateLimitExceeded(
                f"too many failed authentications from this address (at most {item.amount}"
                f" per {item.get_expiry()} s); retry in {retry} s",
                field="Authorization",
                headers={"Retry-After": str(retry)},
            )

    def count_auth_failure(self, address: str) -> None:
        self._limiter.hit(self.auth_failures, "auth-failures", address)

    def hit(self, key_prefix: str, klass: str) -> dict[str, str]:
        """Count one request; return the headers, or raise 429 when over the limit."""
        item = self.limits[klass]
        allowed = self._limiter.hit(item, key_prefix, klass)
        stats = self._limiter.get_window_stats(item, key_prefix, klass)
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
