"""The common base of every query runner: caching and running off the event loop.

A runner holds one validated query object and the engine; ``compute`` (each
kind's own) turns the engine's facts into the answer. ``run`` owns what every
kind shares, as PostHog's query runners do: the answer is cached per tenant
and query while the tenant's data version stays the same, and computed in a
worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import orjson
from starlette.concurrency import run_in_threadpool

from kaie_analytics.analytics.facts import EventEngine
from kaie_analytics.cache import Entry, ResponseCache


class TenantQuery(Protocol):
    @property
    def tenant(self) -> str: ...


Q = TypeVar("Q", bound=TenantQuery)


class QueryRunner(Generic[Q]):
    #: The query kind (part of the cache key, so kinds never share an entry).
    kind: ClassVar[str]
    #: Realtime answers are never cached: an accepted event is in the next one.
    cacheable: ClassVar[bool] = True

    def __init__(self, engine: EventEngine, query: Q) -> None:
        self.engine = engine
        self.query = query

    def compute(self) -> dict[str, Any]:
        """The answer's ``data`` (blocking: reads the engine)."""
        raise NotImplementedError

    async def run(
        self, cache: ResponseCache | None = None, *, fresh: bool = False
    ) -> tuple[Entry, bool]:
        """``{"data": compute()}`` as JSON, from ``cache`` unless stale or ``fresh``;
        and whether it came from the cache."""
        tenant = self.query.tenant
        key = (tenant, self.kind, self.query)
        store = cache if self.cacheable else None
        # Read before computing: a commit meanwhile makes the entry stale, never wrong.
        version = (0, 0)
        if store is not None:
            version = (self.engine.data_version(tenant), await store.versions.current(tenant))
        if store is not None and not fresh:
            hit = store.get(key, version)
            if hit is not None:
                return hit, True
        data = await run_in_threadpool(self.compute)
        body = orjson.dumps({"data": data}, option=orjson.OPT_NON_STR_KEYS)
        entry = Entry(version, body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')
        if store is not None:
            store.put(key, entry)
        return entry, False
