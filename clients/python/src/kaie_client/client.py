"""``Client`` (sync) and ``AsyncClient``: the same methods, over httpx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NotRequired, Self, TypedDict

import httpx

from kaie_client._core import (
    IngestReport,
    RetryPolicy,
    batches,
    data_of,
    done,
    events_request,
    retryable,
)

Json = dict[str, Any]


class Workflow(TypedDict):
    workflow_id: str
    name: str | None
    created_at: str


class Job(TypedDict):
    """A report or an export, as its status endpoint answers."""

    status: str  # generating/processing, completed or failed
    created_at: str
    report_id: NotRequired[str]
    export_id: NotRequired[str]
    download_url: NotRequired[str]
    expires_at: NotRequired[str]
    error: NotRequired[str]


Progress = Callable[[Job], None]
_KINDS = {"report": "/v1/analytics/reports", "export": "/v1/analytics/export"}


def _params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters: None left out, lists joined with commas (as the API takes them)."""
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        out[name] = ",".join(value) if isinstance(value, list | tuple) else value
    return out


class Client:
    """The API, blocking. ``with Client(url, api_key=...) as kaie: ...``"""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None) -> None:  # fmt: skip
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {api_key}"},
        )  # fmt: skip

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request, retried as ``retry`` says; the last answer (or error) stands."""
        for attempt in range(self.retry.tries):
            last = attempt == self.retry.tries - 1
            try:
                response = self._http.request(method, path, **kw)
            except httpx.TransportError:
                if last:
                    raise
                time.sleep(self.retry.delay(attempt, None))
                continue
            if not retryable(response) or last:
                return response
            time.sleep(self.retry.delay(attempt, response))
        raise AssertionError("unreachable")

    def get(self, path: str, **params: Any) -> Any:
        return data_of(self.request("GET", path, params=_params(params)))

    # events ----------------------------------------------------------------

    def send_events(self, events: Sequence[Mapping[str, Any] | bytes]) -> IngestReport:
        """Store any number of events (dicts, or NDJSON lines as bytes); see the README."""
        report = IngestReport()
        for batch in batches(events):
            report.add(data_of(self.request("POST", "/v1/events", **events_request(batch))),
                       batch.offset)  # fmt: skip
        return report

    # analytics -------------------------------------------------------------

    def workflows(self) -> list[Workflow]:
        return self.get("/v1/workflows")

    def workflow_metrics(self, workflow_id: str, **params: Any) -> Json:
        return self.get(f"/v1/analytics/workflows/{workflow_id}", **params)

    def workflow_performance(self, workflow_id: str, **params: Any) -> Json:
        return self.get(f"/v1/analytics/workflows/{workflow_id}/performance", **params)

    def engagement(self, **params: Any) -> Json:
        return self.get("/v1/analytics/customers/engagement", **params)

    def journey(self, **params: Any) -> Json:
        return self.get("/v1/analytics/customers/journey", **params)

    def realtime(self, **params: Any) -> Json:
        return self.get("/v1/analytics/realtime", **params)

    # reports and exports ---------------------------------------------------

    def create_report(self, body: Mapping[str, Any]) -> Job:
        return data_of(self.request("POST", _KINDS["report"], json=body))

    def create_export(self, body: Mapping[str, Any]) -> Job:
        return data_of(self.request("POST", _KINDS["export"], json=body))

    def wait_report(self, report_id: str, **kw: Any) -> Job:
        return self._wait("report", report_id, **kw)

    def wait_export(self, export_id: str, **kw: Any) -> Job:
        return self._wait("export", export_id, **kw)

    def _wait(self, kind: str, job_id: str, *, timeout_s: float = 3600, poll_s: float = 0.5,
              on_progress: Progress | None = None) -> Job:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            job: Job = self.get(f"{_KINDS[kind]}/{job_id}")
            if on_progress is not None:
                on_progress(job)
            if done(job) or time.monotonic() > deadline:
                return job
            time.sleep(poll_s)

    def download(self, url: str, path: str | Path) -> Path:
        """A finished job's file (its ``download_url``), streamed to ``path`` whole or not at all."""
        target = Path(path)
        part = target.with_name(target.name + ".part")
        with self._http.stream("GET", url) as response:
            if not response.is_success:
                response.read()
                data_of(response)
            with open(part, "wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        part.replace(target)
        return target


class AsyncClient:
    """The API, for asyncio. ``async with AsyncClient(url, api_key=...) as kaie: ...``"""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 60.0,
                 retry: RetryPolicy | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:  # fmt: skip
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
            headers={"Authorization": f"Bearer {api_key}"},
        )  # fmt: skip

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.retry.tries):
            last = attempt == self.retry.tries - 1
            try:
                response = await self._http.request(method, path, **kw)
            except httpx.TransportError:
                if last:
                    raise
                await asyncio.sleep(self.retry.delay(attempt, None))
                continue
            if not retryable(response) or last:
                return response
            await asyncio.sleep(self.retry.delay(attempt, response))
        raise AssertionError("unreachable")

    async def get(self, path: str, **params: Any) -> Any:
        return data_of(await self.request("GET", path, params=_params(params)))

    async def send_events(self, events: Sequence[Mapping[str, Any] | bytes]) -> IngestReport:
        report = IngestReport()
        for batch in batches(events):
            response = await self.request("POST", "/v1/events", **events_request(batch))
            report.add(data_of(response), batch.offset)
        return report

    async def workflows(self) -> list[Workflow]:
        return await self.get("/v1/workflows")

    async def workflow_metrics(self, workflow_id: str, **params: Any) -> Json:
        return await self.get(f"/v1/analytics/workflows/{workflow_id}", **params)

    async def workflow_performance(self, workflow_id: str, **params: Any) -> Json:
        return await self.get(f"/v1/analytics/workflows/{workflow_id}/performance", **params)

    async def engagement(self, **params: Any) -> Json:
        return await self.get("/v1/analytics/customers/engagement", **params)

    async def journey(self, **params: Any) -> Json:
        return await self.get("/v1/analytics/customers/journey", **params)

    async def realtime(self, **params: Any) -> Json:
        return await self.get("/v1/analytics/realtime", **params)

    async def create_report(self, body: Mapping[str, Any]) -> Job:
        return data_of(await self.request("POST", _KINDS["report"], json=body))

    async def create_export(self, body: Mapping[str, Any]) -> Job:
        return data_of(await self.request("POST", _KINDS["export"], json=body))

    async def wait_report(self, report_id: str, **kw: Any) -> Job:
        return await self._wait("report", report_id, **kw)

    async def wait_export(self, export_id: str, **kw: Any) -> Job:
        return await self._wait("export", export_id, **kw)

    async def _wait(self, kind: str, job_id: str, *, timeout_s: float = 3600,
                    poll_s: float = 0.5, on_progress: Progress | None = None) -> Job:  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            job: Job = await self.get(f"{_KINDS[kind]}/{job_id}")
            if on_progress is not None:
                on_progress(job)
            if done(job) or time.monotonic() > deadline:
                return job
            await asyncio.sleep(poll_s)

    async def download(self, url: str, path: str | Path) -> Path:
        target = Path(path)
        part = target.with_name(target.name + ".part")
        async with self._http.stream("GET", url) as response:
            if not response.is_success:
                await response.aread()
                data_of(response)
            with open(part, "wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
        part.replace(target)
        return target
