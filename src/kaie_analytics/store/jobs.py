"""Durable report and export jobs, in the SQLite metadata database.

A job moves queued -> running -> completed | failed. Workers claim queued
jobs fairly between tenants (see ``claim``); a job found ``running`` when the server starts was cut off
by a crash and is queued again (at most ``MAX_ATTEMPTS`` times, then failed
with the reason), so no job stays "generating" forever.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from kaie_analytics.store.sqlite import SqliteDatabase

MAX_ATTEMPTS = 3
RETENTION = timedelta(days=7)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,                 -- report | export
    name TEXT,
    params TEXT NOT NULL,               -- the validated request, as JSON
    state TEXT NOT NULL,                -- queued | running | completed | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    expires_at TEXT,
    estimated_completion TEXT NOT NULL,
    error TEXT,
    file_name TEXT,
    content_type TEXT,
    rows INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(tenant, kind, created_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at);
"""


def now_utc() -> datetime:
    return datetime.now(UTC)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def _parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    kind: str
    name: str | None
    params: dict[str, Any]
    state: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime | None
    estimated_completion: datetime
    error: str | None
    file_name: str | None
    content_type: str | None
    rows: int | None


class JobStore(SqliteDatabase):
    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            tenant=row["tenant"],
            kind=row["kind"],
            name=row["name"],
            params=orjson.loads(row["params"]),
            state=row["state"],
            attempts=row["attempts"],
            created_at=_parse(row["created_at"]),  # type: ignore[arg-type]
            started_at=_parse(row["started_at"]),
            completed_at=_parse(row["completed_at"]),
            expires_at=_parse(row["expires_at"]),
            estimated_completion=_parse(row["estimated_completion"]),  # type: ignore[arg-type]
            error=row["error"],
            file_name=row["file_name"],
            content_type=row["content_type"],
            rows=row["rows"],
        )

    def create(
        self, *, tenant: str, kind: str, name: str | None, params: dict[str, Any], estimate_s: float
    ) -> Job:
        created = now_utc()
        job_id = f"{kind}-{secrets.token_hex(8)}"
        self._con().execute(
            "INSERT INTO jobs(id, tenant, kind, name, params, state, created_at,"
            " estimated_completion) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
            (job_id, tenant, kind, name, orjson.dumps(params).decode(), _ts(created),
             _ts(created + timedelta(seconds=estimate_s))),
        )  # fmt: skip
        job = self.get(tenant, kind, job_id)
        assert job is not None
        return job

    def get(self, tenant: str, kind: str, job_id: str) -> Job | None:
        """A job of this tenant and kind; another tenant's job is None (answers 404)."""
        row = (
            self._con()
            .execute(
                "SELECT * FROM jobs WHERE id = ? AND tenant = ? AND kind = ?",
                (job_id, tenant, kind),
            )
            .fetchone()
        )
        return None if row is None else self._job(row)

    def list_jobs(self, tenant: str, kind: str, limit: int = 100) -> list[Job]:
        rows = self._con().execute(
            "SELECT * FROM jobs WHERE tenant = ? AND kind = ? ORDER BY created_at DESC, id LIMIT ?",
            (tenant, kind, limit),
        )
        return [self._job(r) for r in rows]

    def claim(self, max_per_tenant: int) -> Job | None:
        """Take a queued job and mark it running, fairly between tenants.

        The job comes from the tenant with the fewest jobs running (the oldest
        job first), and never from a tenant that already runs ``max_per_tenant``:
        one tenant's many heavy jobs wait for each other, not the other tenants'.
        """
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute(
                "WITH busy AS (SELECT tenant, count(*) AS n FROM jobs WHERE state = 'running'"
                " GROUP BY tenant)"
                " SELECT jobs.* FROM jobs LEFT JOIN busy USING (tenant)"
                " WHERE state = 'queued' AND coalesce(n, 0) < ?"
                " ORDER BY coalesce(n, 0), jobs.rowid LIMIT 1",  # rowid: the order of creation
                (max_per_tenant,),
            ).fetchone()
            if row is None:
                con.execute("COMMIT")
                return None
            con.execute(
                "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1"
                " WHERE id = ?",
                (_ts(now_utc()), row["id"]),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return self._job(con.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def complete(self, job_id: str, *, file_name: str, content_type: str, rows: int) -> None:
        done = now_utc()
        self._con().execute(
            "UPDATE jobs SET state = 'completed', completed_at = ?, expires_at = ?,"
            " file_name = ?, content_type = ?, rows = ?, error = NULL WHERE id = ?",
            (_ts(done), _ts(done + RETENTION), file_name, content_type, rows, job_id),
        )

    def fail(self, job_id: str, reason: str) -> None:
        self._con().execute(
            "UPDATE jobs SET state = 'failed', completed_at = ?, error = ? WHERE id = ?",
            (_ts(now_utc()), reason[:2000], job_id),
        )

    def recover(self) -> int:
        """After a restart: requeue jobs cut off mid-run, or fail them after too many tries."""
        con = self._con()
        con.execute(
            "UPDATE jobs SET state = 'failed', completed_at = ?, error = ?"
            " WHERE state = 'running' AND attempts >= ?",
            (_ts(now_utc()), "the server stopped while this job ran, too many times", MAX_ATTEMPTS),
        )
        return con.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'").rowcount

    def counts(self) -> dict[str, int]:
        rows = self._con().execute("SELECT state, count(*) FROM jobs GROUP BY state")
        return {state: n for state, n in rows}

    def expired(self, before: datetime) -> list[Job]:
        rows = self._con().execute(
            "SELECT * FROM jobs WHERE state = 'completed' AND expires_at < ?", (_ts(before),)
        )
        return [self._job(r) for r in rows]
