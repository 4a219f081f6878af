"""Job workers: threads in the server that run reports and exports off the request path.

``KAIE_JOB_WORKERS`` threads claim jobs fairly between tenants (see
``JobStore.claim``), each under a lease that a heartbeat thread renews every
third of ``KAIE_JOB_LEASE_S``: if this process dies, another one takes its
jobs over once their leases run out. Each job has ``KAIE_JOB_TIME_LIMIT_S`` in
all. A PDF is laid out in a child process, so its pure-Python rendering holds
neither the API's GIL nor a worker past the limit: at the limit the child is
killed.

Files are written to a temporary name, flushed to disk, then renamed into
place, and only then is the job marked completed: a crash at any point leaves
either no file or a complete one, and a job cut off mid-run is run again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import socket
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from kaie_analytics.analytics.facts import EventEngine
from kaie_analytics.analytics.reports import (
    chart_data,
    parse_report_request,
    report_rows,
    report_summary,
)
from kaie_analytics.jobs import exports, reports
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
        engine: EventEngine,
        files_dir: Path,
        telemetry: Telemetry,
        time_limit_s: float,
        workers: int = 2,
        lease_s: float = 30.0,
    ) -> None:
        self.jobs = jobs
        #: Who holds this process's leases (a new name at every start).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_s = lease_s
        self._running: set[str] = set()  # the jobs this process runs now
        self._running_lock = threading.Lock()
        self.engine = engine
        self.files_dir = files_dir
        self.telemetry = telemetry
        self.time_limit_s = time_limit_s
        #: With several workers, one tenant never takes them all (one is left for the others).
        self.max_per_tenant = max(1, workers - 1)
        self._wake = threading.Condition()
        self._wakes = 0  # notifications so far: a worker that saw a change does not sleep
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"kaie-jobs-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        self._threads.append(threading.Thread(target=self._heartbeat, name="kaie-jobs-leases",
                                              daemon=True))  # fmt: skip

    def start(self) -> None:
        if not self.jobs.db.shared:
            # No other process uses this database: what ran when it stopped was cut off.
            interrupted = self.jobs.expire_all_leases()
            if interrupted:
                log.info("interrupted jobs are claimable again", extra={"jobs": interrupted})
        for thread in self._threads:
            thread.start()

    def notify(self) -> None:
        with self._wake:
            self._wakes += 1
            self._wake.notify_all()

    def stop(self) -> None:
        self._stop.set()
        self.notify()
        for thread in self._threads:
            thread.join(timeout=30)
        try:  # what is still running here is given back, for another process to run now
            self.jobs.release(self.owner)
        except Exception:
            log.exception("running jobs were not released; their leases will run out")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with self._running_lock:
                held = list(self._running)
            for job_id in held:
                try:
                    if not self.jobs.renew(self.owner, job_id, self.lease_s):
                        log.warning("lost the lease of a job; another process runs it now",
                                    extra={"job": job_id})  # fmt: skip
                except Exception:
                    log.exception("could not renew a job's lease", extra={"job": job_id})

    def _loop(self, index: int) -> None:
        while not self._stop.is_set():
            seen = self._wakes
            try:
                if index == 0:  # housekeeping once, not per worker
                    self._update_gauge()
                    self._remove_expired()
                job = self.jobs.claim(self.owner, self.max_per_tenant, self.lease_s)
            except Exception:  # the database is unreachable: try again after the poll interval
                log.exception("could not claim a job")
                job = None
            if job is not None:
                try:
                    self._run(job)
                except Exception:  # its outcome could not be recorded: the lease runs out
                    log.exception("a job's outcome was not recorded; it will run again",
                                  extra={"job": job.id})  # fmt: skip
                self.notify()  # a tenant's next job may now be claimable by another worker
                continue
            with self._wake:
                if self._wakes == seen:
                    self._wake.wait(IDLE_POLL_S)

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
        with self._running_lock:
            self._running.add(job.id)
        log.info("job started", extra={"job": job.id, "attempt": job.attempts,
                                       "owner": self.owner})  # fmt: skip
        try:
            self._run_held(job)
        finally:
            with self._running_lock:
                self._running.discard(job.id)

    def _run_held(self, job: Job) -> None:
        started = time.monotonic()
        deadline = started + self.time_limit_s
        try:
            if job.kind == "report":
                file_name, content_type, rows = self._report(job, deadline)
            else:
                file_name, content_type, rows = self._export(job, deadline)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            log.error("job failed", extra={"job": job.id, "reason": reason, "owner": self.owner,
                                           "trace": traceback.format_exc(limit=5)})  # fmt: skip
            self.jobs.fail(job.id, self.owner, reason)
            return
        if not self.jobs.complete(job.id, self.owner, file_name=file_name,
                                  content_type=content_type, rows=rows):  # fmt: skip
            log.warning("job finished after its lease was lost; the other run's result stands",
                        extra={"job": job.id})  # fmt: skip
            return
        log.info("job completed", extra={"job": job.id, "rows": rows, "owner": self.owner,
                                         "seconds": round(time.monotonic() - started, 3)})  # fmt: skip

    def _target(self, job: Job, ext: str, name: str) -> tuple[Path, Path, str]:
        folder = tenant_dir(self.files_dir, job.tenant)
        folder.mkdir(parents=True, exist_ok=True)
        file_name = f"{name}-{job.id}.{ext}"
        final = folder / file_name
        # The temporary name is this process's own: a run that lost its lease never
        # writes into the file of the run that took the job over.
        return final, final.with_name(f"{file_name}.{self.owner.rsplit(':', 1)[1]}.part"), file_name

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

    def _report(self, job: Job, deadline: float) -> tuple[str, str, int]:
        req = parse_report_request(job.params)
        rows = report_rows(self.engine, job.tenant, req)
        if time.monotonic() > deadline:
            raise exports.JobTimeout("the report ran past its time limit (KAIE_JOB_TIME_LIMIT_S)")
        generated = datetime.now(UTC)
        meta = reports.report_metadata(job.id, req, generated, len(rows))
        final, part, file_name = self._target(job, req.format, slug(req.name))
        if req.format == "pdf":
            summary = report_summary(self.engine, job.tenant, req)
            charts = chart_data(self.engine, job.tenant, req)
            reports.write_pdf_in_child(part, meta, req, rows, summary, charts, deadline)
        else:
            with open(part, "wb") as out:
                if req.format == "json":
                    reports.write_json(out, meta, rows)
                else:
                    reports.write_csv(out, req, rows)
        self._publish(part, final)
        return file_name, reports.CONTENT_TYPES[req.format], len(rows)

    def _export(self, job: Job, deadline: float) -> tuple[str, str, int]:
        req = exports.parse_export_request(job.params)
        final, part, file_name = self._target(job, req.format, req.data_type)
        metadata = exports.export_metadata(job.id, req, datetime.now(UTC))
        with open(part, "wb") as out:
            rows = exports.write_export(out, self.engine, job.tenant, req, metadata, deadline)
        self._publish(part, final)
        return file_name, exports.CONTENT_TYPES[req.format], rows
