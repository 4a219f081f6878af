"""Durable report and export jobs, in the metadata database.

A job moves queued -> running -> completed | failed, and belongs to no one
process. A worker claims a job (``claim``) and with it a lease, which it renews
while the job runs (``renew``). A job whose lease ran out (its process died or
hung) is claimable again by any worker, at most ``MAX_ATTEMPTS`` times in all;
after that it is failed with the reason, so no job stays "generating" forever.
Only the lease's holder can complete or fail a job, so a process that lost its
lease cannot overwrite the result of the one that took the job over.

Claims are serialized (on PostgreSQL by an advisory lock, on SQLite by its
write lock) so that the fair order between tenants holds across processes;
``FOR UPDATE SKIP LOCKED`` keeps a claim from waiting on a row another
process is updating.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from kaie_analytics.store.database import Database
from kaie_analytics.store.schema import jobs

MAX_ATTEMPTS = 3
RETENTION = timedelta(days=7)
#: Any fixed number: the advisory lock that serializes claims on PostgreSQL.
_CLAIM_LOCK_KEY = 0x6A6F6273  # "jobs"


def now_utc() -> datetime:
    return datetime.now(UTC)


def _ts(value: datetime | None) -> str | None:
    # Microseconds: jobs created within one second keep their order.
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


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
    lease_owner: str | None


def _job(row: sa.Row[Any]) -> Job:
    return Job(
        id=row.id,
        tenant=row.tenant,
        kind=row.kind,
        name=row.name,
        params=orjson.loads(row.params),
        state=row.state,
        attempts=row.attempts,
        created_at=_parse(row.created_at),  # type: ignore[arg-type]
        started_at=_parse(row.started_at),
        completed_at=_parse(row.completed_at),
        expires_at=_parse(row.expires_at),
        estimated_completion=_parse(row.estimated_completion),  # type: ignore[arg-type]
        error=row.error,
        file_name=row.file_name,
        content_type=row.content_type,
        rows=row.rows,
        lease_owner=row.lease_owner,
    )


def _held_by(owner: str) -> sa.ColumnElement[bool]:
    return sa.and_(jobs.c.state == "running", jobs.c.lease_owner == owner)


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, *, tenant: str, kind: str, name: str | None, params: dict[str, Any], estimate_s: float
    ) -> Job:
        created = now_utc()
        job_id = f"{kind}-{secrets.token_hex(8)}"
        with self.db.writing() as con:
            con.execute(
                jobs.insert().values(
                    id=job_id, tenant=tenant, kind=kind, name=name,
                    params=orjson.dumps(params).decode(), state="queued", attempts=0,
                    created_at=_ts(created),
                    estimated_completion=_ts(created + timedelta(seconds=estimate_s)),
                )
            )  # fmt: skip
        job = self.get(tenant, kind, job_id)
        assert job is not None
        return job

    def get(self, tenant: str, kind: str, job_id: str) -> Job | None:
        """A job of this tenant and kind; another tenant's job is None (answers 404)."""
        query = sa.select(jobs).where(jobs.c.id == job_id, jobs.c.tenant == tenant,
                                      jobs.c.kind == kind)  # fmt: skip
        with self.db.reading() as con:
            row = con.execute(query).first()
        return None if row is None else _job(row)

    def list_jobs(self, tenant: str, kind: str, limit: int = 100) -> list[Job]:
        query = (
            sa.select(jobs)
            .where(jobs.c.tenant == tenant, jobs.c.kind == kind)
            .order_by(jobs.c.created_at.desc(), jobs.c.id)
            .limit(limit)
        )
        with self.db.reading() as con:
            return [_job(row) for row in con.execute(query)]

    def claim(self, owner: str, max_per_tenant: int, lease_s: float) -> Job | None:
        """Take a claimable job for ``owner`` with a lease of ``lease_s``, fairly between tenants.

        Claimable: queued, or running under a lease that ran out. The job comes
        from the tenant with the fewest jobs running in all processes (its
        oldest job first), and never from a tenant that already runs
        ``max_per_tenant`` in ``owner``'s process: one tenant's many heavy jobs
        wait for each other, not for the other tenants'.
        """
        now = now_utc()
        stamp = _ts(now)
        lapsed = sa.and_(jobs.c.state == "running",
                         sa.func.coalesce(jobs.c.lease_expires_at, "") < stamp)  # fmt: skip
        live = sa.and_(jobs.c.state == "running", jobs.c.lease_expires_at >= stamp)
        busy = (
            sa.select(
                jobs.c.tenant,
                sa.func.count().label("everywhere"),
                sa.func.count().filter(jobs.c.lease_owner == owner).label("here"),
            )
            .where(live)
            .group_by(jobs.c.tenant)
            .cte("busy")
        )
        everywhere = sa.func.coalesce(busy.c.everywhere, 0)
        query = (
            sa.select(jobs)
            .outerjoin(busy, busy.c.tenant == jobs.c.tenant)
            .where(sa.or_(jobs.c.state == "queued", lapsed),
                   sa.func.coalesce(busy.c.here, 0) < max_per_tenant)
            .order_by(everywhere, jobs.c.created_at, jobs.c.id)
            .limit(1)
            .with_for_update(of=jobs, skip_locked=True)
        )  # fmt: skip
        with self.db.writing() as con:
            if con.dialect.name == "postgresql":
                con.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CLAIM_LOCK_KEY})
            con.execute(
                jobs.update()
                .where(lapsed, jobs.c.attempts >= MAX_ATTEMPTS)
                .values(state="failed", completed_at=stamp, lease_owner=None,
                        error=f"the job was cut off (its server stopped) {MAX_ATTEMPTS} times")
            )  # fmt: skip
            row = con.execute(query).first()
            if row is None:
                return None
            con.execute(
                jobs.update()
                .where(jobs.c.id == row.id)
                .values(state="running", started_at=stamp, attempts=jobs.c.attempts + 1,
                        lease_owner=owner, lease_expires_at=_ts(now + timedelta(seconds=lease_s)))
            )  # fmt: skip
            claimed = con.execute(sa.select(jobs).where(jobs.c.id == row.id)).one()
        return _job(claimed)

    def renew(self, owner: str, job_id: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease on a running job; False when it no longer holds it."""
        until = _ts(now_utc() + timedelta(seconds=lease_s))
        with self.db.writing() as con:
            result = con.execute(
                jobs.update()
                .where(jobs.c.id == job_id, _held_by(owner))
                .values(lease_expires_at=until)
            )
        return bool(result.rowcount)

    def complete(
        self, job_id: str, owner: str, *, file_name: str, content_type: str, rows: int
    ) -> bool:
        """Mark ``owner``'s job completed; False when another process had taken it over."""
        done = now_utc()
        with self.db.writing() as con:
            result = con.execute(
                jobs.update()
                .where(jobs.c.id == job_id, _held_by(owner))
                .values(state="completed", completed_at=_ts(done), expires_at=_ts(done + RETENTION),
                        file_name=file_name, content_type=content_type, rows=rows, error=None,
                        lease_owner=None, lease_expires_at=None)
            )  # fmt: skip
        return bool(result.rowcount)

    def fail(self, job_id: str, owner: str, reason: str) -> bool:
        with self.db.writing() as con:
            result = con.execute(
                jobs.update()
                .where(jobs.c.id == job_id, _held_by(owner))
                .values(state="failed", completed_at=_ts(now_utc()), error=reason[:2000],
                        lease_owner=None, lease_expires_at=None)
            )  # fmt: skip
        return bool(result.rowcount)

    def release(self, owner: str) -> int:
        """Give back ``owner``'s running jobs (a graceful stop): queued again at once,
        and the attempt is not counted against them."""
        with self.db.writing() as con:
            result = con.execute(
                jobs.update()
                .where(_held_by(owner))
                .values(state="queued", attempts=jobs.c.attempts - 1, lease_owner=None,
                        lease_expires_at=None)
            )  # fmt: skip
        return result.rowcount

    def expire_all_leases(self) -> int:
        """For a database no other process uses (SQLite in the data directory): every
        running job was cut off by the last stop, so it is claimable at once rather
        than when its lease would have run out."""
        with self.db.writing() as con:
            result = con.execute(
                jobs.update().where(jobs.c.state == "running").values(lease_expires_at=None)
            )
        return result.rowcount

    def counts(self) -> dict[str, int]:
        query = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
        with self.db.reading() as con:
            return {state: n for state, n in con.execute(query)}

    def expired(self, before: datetime) -> list[Job]:
        query = sa.select(jobs).where(jobs.c.state == "completed", jobs.c.expires_at < _ts(before))
        with self.db.reading() as con:
            return [_job(row) for row in con.execute(query)]
