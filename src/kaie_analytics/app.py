"""The ASGI application: wiring of settings, stores, error handlers and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from multiprocessing import get_context
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaie_analytics import __version__
from kaie_analytics.auth import KeyCache
from kaie_analytics.cache import ResponseCache
from kaie_analytics.config import Settings
from kaie_analytics.engines import open_engine
from kaie_analytics.errors import ApiError, InvalidParameter, MethodNotAllowed, NotFound
from kaie_analytics.ingest.service import warm_up
from kaie_analytics.jobs.worker import JobWorker
from kaie_analytics.ratelimit import RateLimiter, parse_limit, parse_rate_limits
from kaie_analytics.responses import JSONResponse
from kaie_analytics.routes import (
    customer_analytics,
    dashboard,
    docs,
    events,
    health,
    jobs,
    openapi,
    realtime,
    workflow_analytics,
    workflows,
)
from kaie_analytics.shared_state import DataVersions, connect_redis
from kaie_analytics.signing import load_secret
from kaie_analytics.store.database import Database
from kaie_analytics.store.jobs import JobStore
from kaie_analytics.store.meta import MetaStore
from kaie_analytics.telemetry import Telemetry, TelemetryMiddleware

log = logging.getLogger("kaie_analytics")


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    return error_response(
        InvalidParameter(first.get("msg", "invalid request"), field=".".join(loc) or None)
    )


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})  # 405 carries Allow
    if exc.status_code == 404:
        return error_response(NotFound("no such endpoint", headers=headers))
    if exc.status_code == 405:
        return error_response(
            MethodNotAllowed("this endpoint does not take that method", headers=headers)
        )
    err = ApiError(str(exc.detail), headers=headers)
    err.status = exc.status_code
    return error_response(err)


def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


class UnexpectedErrors:
    """Any exception a route did not expect becomes a 500 in the seed's shape.

    Unlike Starlette's outermost handler, which re-raises after answering (and
    so makes the server drop a keep-alive connection), this answers and ends
    the request normally: the client's connection stays usable.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("unhandled error", exc_info=exc)
            if started:  # too late for an error response; the server ends the connection
                raise
            response = error_response(ApiError("an unexpected error occurred; it has been logged"))
            await response(scope, receive, send)


def _ingest_pool(workers: int) -> ProcessPoolExecutor | None:
    """Processes that decode, validate and prepare event batches (0: in the server)."""
    if workers <= 0:
        return None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    for f in [pool.submit(warm_up) for _ in range(workers)]:
        f.result()
    return pool


async def _live_demo(engine: Any, versions: DataVersions) -> None:
    """While ``demo`` serves: its executions as they happen, every 2 seconds."""
    from kaie_analytics.demo import LiveDemo
    from kaie_analytics.ingest.service import ingest_items

    live = LiveDemo()
    while True:
        await asyncio.sleep(2)
        events = live.due(datetime.now(UTC))
        if events:
            lines = [orjson.dumps(e) for e in events]
            try:
                await run_in_threadpool(ingest_items, engine, "demo", lines)
                await versions.bump("demo")
            except Exception:  # the next tick tries again
                log.exception("the demo's live events were not stored")


def create_app(settings: Settings | None = None, *, demo: bool = False) -> FastAPI:
    """The application; with ``demo``, it also streams the demo tenant's live events."""
    settings = settings or Settings()
    rate_limits = parse_rate_limits(settings.rate_limits)  # a bad setting fails here, at once
    auth_failures = parse_limit(settings.auth_failure_limit, "KAIE_AUTH_FAILURE_LIMIT")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database.open(settings.meta_backend, settings.meta_db_path)
        meta = MetaStore(db)
        engine = open_engine(settings)
        redis = connect_redis(settings.redis_url)
        versions = DataVersions(redis)
        app.state.db = db
        app.state.meta = meta
        app.state.engine = engine
        app.state.versions = versions
        # Made here, on the loop that serves: Redis connections belong to one loop.
        app.state.limiter = RateLimiter(rate_limits, redis, auth_failures)
        app.state.keys = KeyCache(meta, settings.key_cache_ttl_s)
        app.state.cache = ResponseCache(versions)
        app.state.secret = load_secret(settings.secret_key, settings.data_dir)
        app.state.files_dir = settings.files_path
        jobs = JobStore(db)
        worker = JobWorker(
            jobs,
            engine,
            settings.files_path,
            app.state.telemetry,
            settings.job_time_limit_s,
            settings.job_workers,
            settings.job_lease_s,
        )
        app.state.jobs = jobs
        app.state.worker = worker
        worker.start()
        app.state.ingest_pool = _ingest_pool(settings.ingest_workers)
        live = asyncio.create_task(_live_demo(engine, versions)) if demo else None
        try:
            yield
        finally:
            if live is not None:
                live.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live
            if app.state.ingest_pool is not None:
                app.state.ingest_pool.shutdown(cancel_futures=True)
            worker.stop()
            engine.close()
            if redis is not None:
                await redis.aclose()
            db.close()

    app = FastAPI(
        title="kaie-analytics",
        version=__version__,
        description="Analytics API for conversational-automation workflows.",
        default_response_class=JSONResponse,
        lifespan=lifespan,
        # Served by routes.docs from local copies: FastAPI's load from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    telemetry = Telemetry()
    app.state.telemetry = telemetry
    # The last added is the outermost: telemetry sees the 500s of UnexpectedErrors.
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(TelemetryMiddleware, telemetry=telemetry)
    handlers: dict[Any, Any] = {
        ApiError: _api_error,
        RequestValidationError: _validation_error,
        StarletteHTTPException: _http_error,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    for module in (
        dashboard,
        health,
        events,
        workflows,
        workflow_analytics,
        customer_analytics,
        realtime,
        jobs,
    ):
        app.include_router(module.router)
    docs.mount(app)
    openapi.install(app)
    return app
