"""Request ids, access logs, Prometheus metrics and the recent-request window.

One pure ASGI middleware measures every request: it assigns ``X-Request-ID``,
adds the rate-limit headers the auth dependency left in the request state,
counts requests and latencies per route and status, keeps the last five
minutes of requests for ``system_health``, and logs one JSON line.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("kaie_analytics.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
WINDOW_S = 300.0


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kaie_http_requests_total", "HTTP requests", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "kaie_http_request_duration_seconds", "HTTP request latency", ["route", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.events = Counter(
            "kaie_events_total", "Events by ingestion outcome", ["outcome"], registry=self.registry
        )
        self.jobs = Gauge("kaie_jobs", "Jobs by status", ["status"], registry=self.registry)
        self._recent: deque[tuple[float, int, float]] = deque()
        self._lock = threading.Lock()

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, status, seconds))
            while self._recent and self._recent[0][0] < now - WINDOW_S:
                self._recent.popleft()

    def recent(self) -> list[tuple[int, float]]:
        """(status, seconds) of the API requests of the last five minutes."""
        cutoff = time.monotonic() - WINDOW_S
        with self._lock:
            return [(s, d) for t, s, d in self._recent if t >= cutoff]


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                for name, value in state.get("rate_headers", {}).items():
                    if not any(h[0].lower() == name.lower().encode() for h in headers):
                        headers.append((name.lower().encode(), value.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            if route not in ("/metrics", "/healthz", "/readyz"):
                self.telemetry.record(route, scope["method"], status, elapsed)
            principal = state.get("principal")
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "tenant": getattr(principal, "tenant", None),
                },
            )
