"""Custom reports and data exports: create, status, list, signed download."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse

from kaie_analytics.analytics import reports
from kaie_analytics.auth import KeyCache, Principal, require
from kaie_analytics.errors import (
    Forbidden,
    InvalidRequest,
    JobNotReady,
    NotFound,
    ReportExpired,
    ReportGenerationFailed,
)
from kaie_analytics.jobs import exports
from kaie_analytics.jobs import reports as report_files
from kaie_analytics.jobs.worker import tenant_dir
from kaie_analytics.request_body import read_json
from kaie_analytics.routes import openapi as api
from kaie_analytics.routes import schemas
from kaie_analytics.signing import sign, verify
from kaie_analytics.store.jobs import Job, JobStore, now_utc

#: What a download can be: every format of reports and exports.
FILE_TYPES = tuple(sorted({*report_files.CONTENT_TYPES.values(), *exports.CONTENT_TYPES.values()}))

router = APIRouter(tags=["reports and exports"])
LINK_LIFETIME = timedelta(days=7)

# Kind of job -> (public path segment, id field, status shown while not finished).
KINDS = {
    "report": ("reports", "report_id", "generating"),
    "export": ("export", "export_id", "processing"),
}


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds").replace("+00:00", "Z")


#: Host names a request may arrive under without KAIE_PUBLIC_URL or KAIE_ALLOWED_HOSTS.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def link_base(request: Request) -> str:
    """The base of absolute download links: never a ``Host`` header nobody vouched for.

    A link built from any ``Host`` would let a forged request hand a victim a
    link to another site; so it is ``KAIE_PUBLIC_URL`` when set, else the
    request's own base only if its host is the listen address, a loopback name
    or in ``KAIE_ALLOWED_HOSTS``.
    """
    settings = request.app.state.settings
    if settings.public_url:
        return str(settings.public_url).rstrip("/")
    host = request.url.hostname or ""
    if host not in LOOPBACK_HOSTS | {settings.host, *settings.allowed_host_names}:
        raise InvalidRequest(
            f"download links are not made for the host {host[:100]!r}: the operator sets"
            " KAIE_PUBLIC_URL (e.g. https://analytics.example.com) or adds the host to"
            " KAIE_ALLOWED_HOSTS",
            field="Host",
        )
    return str(request.base_url).rstrip("/")


def _download_url(request: Request, job: Job) -> str:
    segment = KINDS[job.kind][0]
    expires = job.expires_at or job.created_at + LINK_LIFETIME
    exp = int(expires.timestamp())
    key = request.state.principal.key_prefix
    sig = sign(request.app.state.secret, job.kind, job.id, job.tenant, key, exp)
    query = urlencode({"tenant": job.tenant, "key": key, "expires": exp, "signature": sig})
    return f"{link_base(request)}/v1/analytics/{segment}/{job.id}/download?{query}"


def render_job(request: Request, job: Job) -> dict[str, Any]:
    _, id_field, pending = KINDS[job.kind]
    status = {"queued": pending, "running": pending}.get(job.state, job.state)
    out: dict[str, Any] = {id_field: job.id}
    if job.kind == "report":
        out["name"] = job.name
    else:
        out["data_type"] = job.params["data_type"]
    out |= {
        "status": status,
        "format": job.params.get("format"),
        "created_at": _iso(job.created_at),
    }
    if status == pending:
        out["estimated_completion"] = _iso(max(job.estimated_completion, now_utc()))
    if job.state == "completed":
        out |= {"completed_at": _iso(job.completed_at), "rows": job.rows}
        if job.kind == "export" and job.params.get("include_metadata"):
            req = exports.parse_export_request(job.params)
            out["metadata"] = exports.export_metadata(job.id, req, job.completed_at or now_utc())
    if job.state == "failed":
        out["completed_at"] = _iso(job.completed_at)
        out["error"] = ReportGenerationFailed(job.error).body()["error"]
    if job.state != "failed":
        out["download_url"] = _download_url(request, job)
        out["expires_at"] = _iso(job.expires_at or job.created_at + LINK_LIFETIME)
    return out


def _estimate_s(request: Request, tenant: str, lo: Any, hi: Any, per_second: float) -> float:
    return 1.0 + request.app.state.engine.count_events(tenant, lo, hi) / per_second


async def _create(request: Request, tenant: str, kind: str, name: str | None,
                  params: dict[str, Any], lo: Any, hi: Any, per_second: float) -> Job:  # fmt: skip
    jobs: JobStore = request.app.state.jobs
    link_base(request)  # refuse an untrusted host before any work, not after
    estimate = await run_in_threadpool(_estimate_s, request, tenant, lo, hi, per_second)
    job = await run_in_threadpool(
        lambda: jobs.create(tenant=tenant, kind=kind, name=name, params=params, estimate_s=estimate)
    )
    request.app.state.worker.notify()
    return job


async def _get(request: Request, tenant: str, kind: str, job_id: str) -> Job:
    job = await run_in_threadpool(request.app.state.jobs.get, tenant, kind, job_id)
    if job is None:
        raise NotFound(f"no {kind} {job_id!r} for this tenant", field=KINDS[kind][1])
    return job


async def _download(request: Request, kind: str, job_id: str, tenant: str) -> FileResponse:
    job = await _get(request, tenant, kind, job_id)
    if job.state == "failed":
        raise ReportGenerationFailed(job.error, field=KINDS[kind][1])
    if job.state != "completed" or job.file_name is None:
        raise JobNotReady(f"the {kind} is still {KINDS[kind][2]}; try again later")
    if job.expires_at is not None and job.expires_at < now_utc():
        raise ReportExpired(f"this {kind} expired at {_iso(job.expires_at)}")
    path = tenant_dir(request.app.state.files_dir, tenant) / job.file_name
    if not path.exists():
        raise ReportExpired(f"the {kind} file is no longer kept")
    return FileResponse(path, media_type=job.content_type, filename=job.file_name)


async def _principal_or_link(request: Request, kind: str, job_id: str) -> str:
    """The tenant of a download: from a valid signed link, else from the API key."""
    q = request.query_params
    if "signature" not in q:
        principal = await require("analytics:read")(request)
        return principal.tenant
    tenant, key, expires = q.get("tenant", ""), q.get("key", ""), q.get("expires", "")
    valid = expires.isascii() and expires.isdigit() and len(expires) <= 12
    if not valid or not verify(
        request.app.state.secret, kind, job_id, tenant, key, int(expires), q["signature"]
    ):
        raise Forbidden("the download link is invalid or was altered", field="signature")
    if int(expires) < time.time():
        raise ReportExpired("the download link has expired")
    keys: KeyCache = request.app.state.keys
    if not await keys.is_active(key):
        raise Forbidden(
            "the API key this link was made for has been revoked; ask for the status again"
            " with an active key for a new link",
            field="key",
        )
    return tenant


# ------------------------------------------------------------------- reports


@router.post(
    "/v1/analytics/reports",
    status_code=202,
    response_model=None,
    responses=api.answers(schemas.JobAnswer, 400, 413, 422, ok=202),
    openapi_extra=api.body(schemas.ReportBody),
)
async def create_report(
    request: Request, principal: Principal = Depends(require("reports:write", "reports"))
) -> dict[str, Any]:
    """Start building a report (JSON, CSV or PDF); poll its status, then download it."""
    req = reports.parse_report_request(await read_json(request))
    job = await _create(request, principal.tenant, "report", req.name, req.as_params(),
                        req.period.start_naive, req.period.end_naive, 2_000_000)  # fmt: skip
    return {"data": render_job(request, job)}


@router.get("/v1/analytics/reports", response_model=None, responses=api.answers(schemas.JobsAnswer))
async def list_reports(
    request: Request, principal: Principal = Depends(require("analytics:read"))
) -> dict[str, Any]:
    """The tenant's reports, newest first (at most 100)."""
    jobs = await run_in_threadpool(request.app.state.jobs.list_jobs, principal.tenant, "report")
    return {"data": [render_job(request, j) for j in jobs]}


@router.get(
    "/v1/analytics/reports/{report_id}",
    response_model=None,
    responses=api.answers(schemas.JobAnswer, 400, 404),
)
async def get_report(
    report_id: str, request: Request, principal: Principal = Depends(require("analytics:read"))
) -> dict[str, Any]:
    return {"data": render_job(request, await _get(request, principal.tenant, "report", report_id))}


@router.get(
    "/v1/analytics/reports/{report_id}/download",
    response_class=FileResponse,
    responses=api.answers(None, 400, 404, 409, 410, 500, media=FILE_TYPES),
    openapi_extra={"parameters": api.SIGNED_LINK, "security": [{"bearerAuth": []}, {}]},
)
async def download_report(report_id: str, request: Request) -> FileResponse:
    """The report file; works with the signed ``download_url`` alone, or with an API key."""
    tenant = await _principal_or_link(request, "report", report_id)
    return await _download(request, "report", report_id, tenant)


# ------------------------------------------------------------------- exports


@router.post(
    "/v1/analytics/export",
    status_code=202,
    response_model=None,
    responses=api.answers(schemas.JobAnswer, 400, 413, ok=202),
    openapi_extra=api.body(schemas.ExportBody),
)
async def create_export(
    request: Request, principal: Principal = Depends(require("reports:write", "export"))
) -> dict[str, Any]:
    """Start an export of raw or aggregated data (CSV, JSON, NDJSON or Parquet)."""
    req = exports.parse_export_request(await read_json(request))
    job = await _create(request, principal.tenant, "export", None, req.as_params(),
                        req.period.start_naive, req.period.end_naive, 1_000_000)  # fmt: skip
    return {"data": render_job(request, job)}


@router.get("/v1/analytics/export", response_model=None, responses=api.answers(schemas.JobsAnswer))
async def list_exports(
    request: Request, principal: Principal = Depends(require("analytics:read"))
) -> dict[str, Any]:
    jobs = await run_in_threadpool(request.app.state.jobs.list_jobs, principal.tenant, "export")
    return {"data": [render_job(request, j) for j in jobs]}


@router.get(
    "/v1/analytics/export/{export_id}",
    response_model=None,
    responses=api.answers(schemas.JobAnswer, 400, 404),
)
async def get_export(
    export_id: str, request: Request, principal: Principal = Depends(require("analytics:read"))
) -> dict[str, Any]:
    return {"data": render_job(request, await _get(request, principal.tenant, "export", export_id))}


@router.get(
    "/v1/analytics/export/{export_id}/download",
    response_class=FileResponse,
    responses=api.answers(None, 400, 404, 409, 410, 500, media=FILE_TYPES),
    openapi_extra={"parameters": api.SIGNED_LINK, "security": [{"bearerAuth": []}, {}]},
)
async def download_export(export_id: str, request: Request) -> FileResponse:
    tenant = await _principal_or_link(request, "export", export_id)
    return await _download(request, "export", export_id, tenant)
