"""The job worker: a thread in the server that runs reports and exports off the request path.

Files are written to ``<name>.part``, flushed to disk, then renamed into place,
and only then is the job marked completed: a crash at any point leaves either
no file or a complete one, and a job cut off mid-run is run again on restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kaie_analytics.jobs import exports, reports
from kaie_analytics.query.reports import chart_series, parse_report_request, report_rows
from kaie_analytics.store.duckdb_store import DuckDBEventStore
from kaie_analytics.store.jobs import Job, JobStore
from kaie_analytics.telemetry import Telemetry

log = logging.getLogger("kaie_analytics.jobs")
IDLE_POLL_S = 5.0


def tenant_dir(files_dir: Path, tenant: str) -> Path:
    return files_dir / hashlib.sha256(tenant.encode()).hexdigest()[:24]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "report"


class JobWorker:
    def __init__(
        self,
        jobs: JobStore,
        store: DuckDBEventStore,
        files_dir: Path,
        telemetry: Telemetry,
        time_limit_s: float,
    ) -> None:
        self.jobs = jobs
        self.store = store
        self.files_dir = files_dir
        self.telemetry = telemetry
        self.time_limit_s = time_limit_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kaie-jobs", daemon=True)

    def start(self) -> None:
        requeued = self.jobs.recover()
        if requeued:
            log.info("requeued interrupted jobs", extra={"jobs": requeued})
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.jobs.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._update_gauge()
            self._remove_expired()
            job = self.jobs.claim()
            if job is None:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            self._run(job)

    def _update_gauge(self) -> None:
        counts = self.jobs.counts()
        for state in ("queued", "running", "completed", "failed"):
            self.telemetry.jobs.labels(state).set(counts.get(state, 0))

    def _remove_expired(self) -> None:
        for job in self.jobs.expired(datetime.now(UTC)):
            if job.file_name:
                path = tenant_dir(self.files_dir, job.tenant) / job.file_name
                path.unlink(missing_ok=True)

    def _run(self, job: Job) -> None:
        started = time.monotonic()
        try:
            if job.kind == "report":
                file_name, content_type, rows = self._report(job)
            else:
                file_name, content_type, rows = self._export(job)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            log.error("job failed", extra={"job": job.id, "reason": reason,
                                           "trace": traceback.format_exc(limit=5)})  # fmt: skip
            self.jobs.fail(job.id, reason)
            return
        self.jobs.complete(job.id, file_name=file_name, content_type=content_type, rows=rows)
        log.info("job completed", extra={"job": job.id, "rows": rows,
                                         "seconds": round(time.monotonic() - started, 3)})  # fmt: skip

    def _target(self, job: Job, ext: str, name: str) -> tuple[Path, Path, str]:
        folder = tenant_dir(self.files_dir, job.tenant)
        folder.mkdir(parents=True, exist_ok=True)
        file_name = f"{name}-{job.id}.{ext}"
        final = folder / file_name
        return final, final.with_name(file_name + ".part"), file_name

    @staticmethod
    def _publish(part: Path, final: Path) -> None:
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(part, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _report(self, job: Job) -> tuple[str, str, int]:
        req = parse_report_request(job.params)
        rows = report_rows(self.store, job.tenant, req)
        generated = datetime.now(UTC)
        meta = reports.report_metadata(job.id, req, generated, len(rows))
        final, part, file_name = self._target(job, req.format, slug(req.name))
        if req.format == "pdf":
            reports.write_pdf(part, meta, req, rows, chart_series(self.store, job.tenant, req))
        else:
            with open(part, "wb") as out:
                if req.format == "json":
                    reports.write_json(out, meta, rows)
                else:
                    reports.write_csv(out, req, rows)
        self._publish(part, final)
        return file_name, reports.CONTENT_TYPES[req.format], len(rows)

    def _export(self, job: Job) -> tuple[str, str, int]:
        req = exports.parse_export_request(job.params)
        final, part, file_name = self._target(job, req.format, req.data_type)
        metadata: dict[str, Any] = {
            "export_id": job.id,
            "data_type": req.data_type,
            "period": req.period.render(),
            "timezone": req.period.tz.key,
            "filters": {"workflow_ids": list(req.workflow_ids), "channels": list(req.channels)},
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        with open(part, "wb") as out:
            rows = exports.write_export(
                out, self.store, job.tenant, req, metadata, self.time_limit_s
            )
        self._publish(part, final)
        return file_name, exports.CONTENT_TYPES[req.format], rows
